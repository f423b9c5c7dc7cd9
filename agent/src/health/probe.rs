//! Running one check against a replica, the way a client on its node would
//! reach it: HTTP and TCP to its address, exec inside it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use flotilla_api::spec::{Check, Probe};

use crate::runtime::Runtime;

/// Where a replica can be reached and run in.
#[derive(Clone)]
pub struct Target {
    pub runtime: Arc<Runtime>,
    /// Container or process id.
    pub handle: String,
    /// The container's address on its network, or loopback for a process.
    pub address: Option<IpAddr>,
    /// The spec's environment, for exec checks beside a process.
    pub env: std::collections::BTreeMap<String, String>,
}

/// Output kept from an exec check, in bytes.
const MAX_OUTPUT: usize = 200;

/// Runs the check once: whether it passed, and what it found in a few words.
pub async fn probe(check: &Check, target: &Target, http: &reqwest::Client) -> (bool, String) {
    let timeout = check.timeout.to_std();
    let Some(probe) = check.probe() else { return (false, "the check names no probe".into()) };
    match probe {
        Probe::Http(spec) => {
            let Some(address) = target.address else { return (false, "the replica has no address".into()) };
            let url = format!("http://{}{}", SocketAddr::new(address, spec.port), spec.path);
            match http.get(&url).timeout(timeout).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    (spec.expect.contains(status), format!("GET {} -> {status}", spec.path))
                }
                Err(error) if error.is_timeout() => {
                    (false, format!("GET {}: no answer within {}", spec.path, check.timeout))
                }
                Err(error) => (false, format!("GET {}: {}", spec.path, root_cause(&error))),
            }
        }
        Probe::Tcp(spec) => {
            let Some(address) = target.address else { return (false, "the replica has no address".into()) };
            let socket = SocketAddr::new(address, spec.port);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(socket)).await {
                Ok(Ok(_)) => (true, format!("connected to port {}", spec.port)),
                Ok(Err(error)) => (false, format!("port {}: {error}", spec.port)),
                Err(_) => (false, format!("port {}: no answer within {}", spec.port, check.timeout)),
            }
        }
        Probe::Exec(command) => {
            match target.runtime.exec(&target.handle, command, &target.env, timeout).await {
                Ok((code, output)) => {
                    let mut output = output.trim().to_owned();
                    if output.len() > MAX_OUTPUT {
                        let cut = (0..=MAX_OUTPUT).rev().find(|i| output.is_char_boundary(*i)).unwrap_or(0);
                        output.truncate(cut);
                    }
                    let text = if output.is_empty() {
                        format!("exit {code}")
                    } else {
                        format!("exit {code}: {output}")
                    };
                    (code == 0, text)
                }
                Err(error) => (false, error.to_string()),
            }
        }
    }
}

/// The innermost error's words ("Connection refused"), not reqwest's wrapper.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
