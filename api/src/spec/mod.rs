//! The workload spec: the YAML a user writes, and the one place where it is
//! validated. The CLI validates before it sends (to show `file:line:column`),
//! the server validates again on every write (it trusts no client), and both
//! run exactly this code.
//!
//! Value-level rules (a quantity, a name, a constraint) live in `Deserialize`
//! impls so that the parser reports them with their line and column;
//! rules that relate several fields live in [`WorkloadSpec::validate`].

mod autoscale;
mod checks;
mod duration;
mod name;
mod parse;
mod ports;
mod resources;
mod secrets;
mod service;
mod update;
mod validation;
mod volumes;
mod workload;

pub use autoscale::{Autoscale, Percent};
pub use checks::{
    Check, HttpCheck, MAX_CHECKS, MAX_SPEC_DURATION, MIN_CHECK_PERIOD, OnFailure, Probe, StatusRange,
    TcpCheck,
};
pub use duration::SpecDuration;
pub use name::{DnsLabel, WorkloadName};
pub use parse::{parse_json, parse_yaml};
pub use ports::{PortSpec, Protocol};
pub use resources::Resources;
pub use secrets::{EnvValue, SecretMount, validate_secret_name};
pub use service::{Balance, ServiceSpec};
pub use update::UpdateStrategy;
pub use validation::FieldError;
pub use volumes::{VolumeMount, slot_volume_name};
pub use workload::{Driver, PlacementStrategy, PullPolicy, RestartPolicy, WorkloadSpec};

/// Upper bound on replicas of one workload: a typo guard, not a scale limit.
pub const MAX_REPLICAS: u32 = 100_000;

/// One autoscaling step grows replicas by at most this percent (11×).
pub const MAX_SCALE_UP_PERCENT: u32 = 1000;
/// Largest spec document accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A value written either as a number or as text (`50` or `"50%"`, `200`
/// or `200-399`), as text for the field's own parser, which reports the
/// error with its line and column.
fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    Ok(match <Raw as serde::Deserialize>::deserialize(d)? {
        Raw::Number(n) => n.to_string(),
        Raw::Text(t) => t,
    })
}
