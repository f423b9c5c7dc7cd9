//! Getting a replica's image onto the node: through the engine
//! (`create_image`), as the spec's pull policy says, with the registry's
//! credentials from the workload's pull secret or the agent host's Docker
//! config. Replicas of one image wait for one pull rather than each
//! starting its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptionsBuilder;
use flotilla_api::spec::PullPolicy;
use futures_util::StreamExt;

use super::RuntimeError;

/// How often pull progress is passed on while layers download.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// An image reference split as the engine's pull takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference {
    /// `registry/path/name`, without tag or digest.
    pub repository: String,
    /// The tag, or the digest (`sha256:...`) for `name@sha256:...`.
    pub tag: String,
    /// The registry's host (`127.0.0.1:5000`), or Docker Hub's.
    pub registry: String,
}

const DOCKER_HUB: &str = "docker.io";

impl ImageReference {
    pub fn parse(image: &str) -> Self {
        let (repository, tag) = match image.split_once('@') {
            Some((repository, digest)) => (repository, digest),
            None => match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
                Some((repository, tag)) => (repository, tag),
                None => (image, "latest"),
            },
        };
        let registry = match repository.split_once('/') {
            Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
            _ => DOCKER_HUB,
        };
        ImageReference {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            registry: registry.to_owned(),
        }
    }

    fn by_digest(&self) -> bool {
        self.tag.starts_with("sha256:")
    }
}

/// What a pull did, for the replica's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSummary {
    pub layers: usize,
    pub bytes: u64,
    pub took: Duration,
    /// The manifest digest the registry sent (`sha256:...`).
    pub digest: Option<String>,
}

impl std::fmt::Display for PullSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers, {:.1} MB in {:.1} s",
            self.layers,
            self.bytes as f64 / 1e6,
            self.took.as_secs_f64()
        )
    }
}

/// The image ready on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyImage {
    /// `repository@sha256:...`, when the image came from a registry.
    pub digest: Option<String>,
    /// Set when this start pulled it.
    pub pulled: Option<PullSummary>,
}

/// An image's last pull on this node: when it ended and the digest it brought.
struct LastPull {
    at: Instant,
    digest: Option<String>,
}

pub struct ImagePuller {
    docker: Docker,
    /// `auths` of the agent host's Docker config, read at start.
    host_credentials: HashMap<String, DockerCredentials>,
    /// One lock per image: when its last pull finished. Replicas starting
    /// together wait for the one pull in progress instead of starting theirs.
    images: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<LastPull>>>>>,
}

impl ImagePuller {
    pub fn new(docker: Docker) -> Self {
        ImagePuller { docker, host_credentials: host_credentials(), images: Mutex::default() }
    }

    fn lock_for(&self, image: &str) -> Arc<tokio::sync::Mutex<Option<LastPull>>> {
        let mut images = self.images.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(images.entry(image.to_owned()).or_default())
    }

    /// Makes `image` present as `policy` says and answers which digest it is.
    /// `pull_config` is the workload's pull secret (a Docker config JSON);
    /// `progress` hears how a pull goes.
    pub async fn ready(
        &self,
        image: &str,
        policy: PullPolicy,
        pull_config: Option<&[u8]>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<ReadyImage, RuntimeError> {
        let reference = ImageReference::parse(image);
        // An image already here needs no lock: replicas of it start side by side.
        if policy != PullPolicy::Always {
            match self.digests_held(image).await {
                Some(digests) => {
                    return Ok(ReadyImage { digest: pick(image, &reference, digests), pulled: None });
                }
                None if policy == PullPolicy::Never => {
                    return Err(RuntimeError::NeverPulled(image.to_owned()));
                }
                None => {}
            }
        }
        let asked = Instant::now();
        let lock = self.lock_for(image);
        let mut last_pull = lock.lock().await;
        // A pull that ended while this start waited for it is as fresh, and
        // says which digest it brought: the replicas waiting for one pull
        // go on without asking the engine again.
        if let Some(fresh) = last_pull.as_ref().filter(|last| last.at >= asked) {
            let digests = fresh.digest.iter().cloned().collect();
            return Ok(ReadyImage { digest: pick(image, &reference, digests), pulled: None });
        }
        let pull = policy == PullPolicy::Always || self.digests_held(image).await.is_none();
        if pull {
            let credentials = match pull_config {
                Some(config) => credentials_in(config, &reference.registry).map_err(|reason| {
                    RuntimeError::Pull { image: image.to_owned(), reason: format!("pull_secret: {reason}") }
                })?,
                None => self.host_credentials.get(&reference.registry).cloned(),
            };
            let summary = self.pull(image, &reference, credentials, progress).await?;
            let sent = summary.digest.as_ref().map(|d| format!("{}@{d}", reference.repository));
            let digest = match sent {
                Some(sent) => pick(image, &reference, vec![sent]),
                None => pick(image, &reference, self.digests_held(image).await.unwrap_or_default()),
            };
            *last_pull = Some(LastPull { at: Instant::now(), digest: digest.clone() });
            return Ok(ReadyImage { digest, pulled: Some(summary) });
        }
        drop(last_pull);
        let digests = self.digests_held(image).await.unwrap_or_default();
        Ok(ReadyImage { digest: pick(image, &reference, digests), pulled: None })
    }

    async fn pull(
        &self,
        image: &str,
        reference: &ImageReference,
        credentials: Option<DockerCredentials>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<PullSummary, RuntimeError> {
        let started = Instant::now();
        let options = CreateImageOptionsBuilder::default()
            .from_image(&reference.repository)
            .tag(&reference.tag)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        // Each layer's size and whether it is done.
        let mut layers: HashMap<String, (u64, bool)> = HashMap::new();
        let mut last_said = Instant::now();
        let mut digest = None;
        progress(format!("pulling image {image}"));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|error| RuntimeError::Pull {
                image: image.to_owned(),
                reason: engine_reason(error),
            })?;
            if let Some(sent) = info.status.as_deref().and_then(|s| s.strip_prefix("Digest: ")) {
                digest = Some(sent.trim().to_owned());
            }
            let (Some(id), Some(status)) = (info.id, info.status) else { continue };
            let layer = layers.entry(id).or_default();
            if let Some(total) = info.progress_detail.and_then(|d| d.total).filter(|t| *t > 0) {
                layer.0 = layer.0.max(total as u64);
            }
            if status == "Pull complete" || status == "Already exists" {
                layer.1 = true;
            }
            if last_said.elapsed() >= PROGRESS_EVERY {
                last_said = Instant::now();
                let done = layers.values().filter(|(_, done)| *done).count();
                let bytes: u64 = layers.values().map(|(size, _)| size).sum();
                progress(format!(
                    "pulling image {image}: {done}/{} layers, {:.1} MB",
                    layers.len(),
                    bytes as f64 / 1e6
                ));
            }
        }
        Ok(PullSummary {
            layers: layers.len(),
            bytes: layers.values().map(|(size, _)| size).sum(),
            took: started.elapsed(),
            digest,
        })
    }

    /// The registry digests of the image, if the node holds it.
    async fn digests_held(&self, image: &str) -> Option<Vec<String>> {
        Some(self.docker.inspect_image(image).await.ok()?.repo_digests.unwrap_or_default())
    }
}

/// Which of an image's registry digests names it: the given one for
/// `name@sha256:...`, else the one of its repository.
fn pick(image: &str, reference: &ImageReference, digests: Vec<String>) -> Option<String> {
    if reference.by_digest() {
        return Some(image.to_owned());
    }
    let prefix = format!("{}@", reference.repository);
    digests.iter().find(|d| d.starts_with(&prefix)).or(digests.first()).cloned()
}

/// What the engine said, as the registry said it where it can be found.
fn engine_reason(error: bollard::errors::Error) -> String {
    match error {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

/// The host's Docker config: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`; none when unreadable.
fn host_credentials() -> HashMap<String, DockerCredentials> {
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => std::path::PathBuf::from(dir).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(home) => std::path::PathBuf::from(home).join(".docker/config.json"),
            None => return HashMap::new(),
        },
    };
    let Ok(text) = std::fs::read(&path) else {
        return HashMap::new();
    };
    match all_credentials(&text) {
        Ok(credentials) => credentials,
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "cannot read registry credentials");
            HashMap::new()
        }
    }
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// A config's `auths` key as a registry host: `https://host/v1/` is `host`,
/// and Docker Hub's historical key is `docker.io`.
fn registry_host(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        DOCKER_HUB.to_owned()
    } else {
        host.to_owned()
    }
}

/// Every registry's credentials in a Docker config JSON.
fn all_credentials(config: &[u8]) -> Result<HashMap<String, DockerCredentials>, String> {
    let config: DockerConfig =
        serde_json::from_slice(config).map_err(|e| format!("not a Docker config JSON: {e}"))?;
    let mut credentials = HashMap::new();
    for (key, entry) in config.auths {
        let (username, password) = match (entry.username, entry.password, entry.auth) {
            (Some(username), Some(password), _) => (username, password),
            (_, _, Some(auth)) => {
                let decoded = decode_base64(&auth)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| format!("auths.{key}.auth: not base64 of USER:PASSWORD"))?;
                let (username, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("auths.{key}.auth: not base64 of USER:PASSWORD"))?;
                (username.to_owned(), password.to_owned())
            }
            _ => return Err(format!("auths.{key}: needs `auth`, or `username` and `password`")),
        };
        let host = registry_host(&key);
        credentials.insert(
            host.clone(),
            DockerCredentials {
                username: Some(username),
                password: Some(password),
                serveraddress: Some(host),
                ..DockerCredentials::default()
            },
        );
    }
    Ok(credentials)
}

/// The credentials a pull secret holds for `registry`.
fn credentials_in(config: &[u8], registry: &str) -> Result<Option<DockerCredentials>, String> {
    let mut all = all_credentials(config)?;
    match all.remove(registry) {
        Some(credentials) => Ok(Some(credentials)),
        None => Err(format!("holds no credentials for registry {registry}")),
    }
}

/// Standard base64 (with or without padding), as Docker configs write `auth`.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.trim().trim_end_matches('=').bytes().map(value).collect::<Option<_>>()?;
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&bits.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_tag_and_registry() {
        let cases = [
            ("busybox", "busybox", "latest", "docker.io"),
            ("nginx:1.27", "nginx", "1.27", "docker.io"),
            ("127.0.0.1:5000/team/api:4.2", "127.0.0.1:5000/team/api", "4.2", "127.0.0.1:5000"),
            ("127.0.0.1:5000/api", "127.0.0.1:5000/api", "latest", "127.0.0.1:5000"),
            (
                "registry.example.com/api@sha256:ab",
                "registry.example.com/api",
                "sha256:ab",
                "registry.example.com",
            ),
            ("localhost/x:1", "localhost/x", "1", "localhost"),
        ];
        for (image, repository, tag, registry) in cases {
            let reference = ImageReference::parse(image);
            assert_eq!(
                (reference.repository.as_str(), reference.tag.as_str(), reference.registry.as_str()),
                (repository, tag, registry),
                "{image}"
            );
        }
    }

    #[test]
    fn docker_configs_give_credentials_by_registry_and_say_what_is_wrong() {
        // "user:pa:ss" in base64, and one with explicit fields.
        let config = br#"{"auths": {"https://127.0.0.1:5000/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "reg.example.com": {"username": "u", "password": "p"}}}"#;
        let found = credentials_in(config, "127.0.0.1:5000").expect("parses").expect("found");
        assert_eq!((found.username.as_deref(), found.password.as_deref()), (Some("user"), Some("pa:ss")));
        assert_eq!(
            credentials_in(config, "reg.example.com").expect("ok").and_then(|c| c.username),
            Some("u".into())
        );
        let missing = credentials_in(config, "other:1").expect_err("no entry");
        assert!(missing.contains("other:1"), "{missing}");
        let bad = credentials_in(br#"{"auths": {"r": {"auth": "!!"}}}"#, "r").expect_err("bad base64");
        assert!(bad.contains("auths.r.auth"), "{bad}");
        assert!(credentials_in(b"not json", "r").expect_err("not json").contains("Docker config JSON"));
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        for (text, plain) in [("", ""), ("YQ==", "a"), ("YWI=", "ab"), ("YWJj", "abc"), ("YWJjZA", "abcd")] {
            assert_eq!(decode_base64(text).as_deref(), Some(plain.as_bytes()), "{text}");
        }
        assert_eq!(decode_base64("Y"), None);
    }
}
