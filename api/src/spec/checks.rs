//! Health checks: how an agent tells a replica that serves from one that
//! merely runs (Kubernetes' probes, Nomad's checks, Docker's HEALTHCHECK).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{DnsLabel, SpecDuration};

/// Shortest interval and timeout a check may have: probing faster than
/// this costs more than it tells.
pub const MIN_CHECK_PERIOD: SpecDuration = SpecDuration::from_millis(100);
/// Longest duration any check or update field may have.
pub const MAX_SPEC_DURATION: SpecDuration = SpecDuration::from_secs(3600);
/// Checks one workload may have.
pub const MAX_CHECKS: usize = 16;

/// What a failing check does to its replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// A readiness check: the replica is marked unhealthy and keeps running.
    #[default]
    Unready,
    /// A liveness check: the replica is restarted, with the restart backoff.
    Restart,
}

/// HTTP status codes a check accepts: `200`, or a range such as `200-399`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        StatusRange { low: 200, high: 399 }
    }
}

impl StatusRange {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{text}` is not a status code or range such as 200 or 200-399");
        let (low, high) = text.trim().split_once('-').unwrap_or((text.trim(), text.trim()));
        let low: u16 = low.trim().parse().map_err(|_| invalid())?;
        let high: u16 = high.trim().parse().map_err(|_| invalid())?;
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) {
            return Err(format!("`{text}`: status codes are between 100 and 599"));
        }
        if low > high {
            return Err(format!("`{text}`: the range ends before it starts"));
        }
        Ok(StatusRange { low, high })
    }

    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = super::number_or_text(d)?;
        StatusRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `GET path` on the replica's port; healthy when the status is expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(default = "default_path")]
    pub path: String,
    pub port: u16,
    #[serde(default)]
    pub expect: StatusRange,
}

fn default_path() -> String {
    "/".to_owned()
}

/// A TCP connection to the replica's port; healthy when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: u16,
}

/// One health check. Exactly one of `http`, `tcp` and `exec` is set
/// (validation says so when not); [`Check::probe`] gives that one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Unique within the workload; shown in `ps` and in rollout failures.
    pub name: DnsLabel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// A command run inside the container (or beside the process); exit 0 is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default = "default_interval")]
    pub interval: SpecDuration,
    #[serde(default = "default_timeout")]
    pub timeout: SpecDuration,
    /// Failures during this grace after a start are not counted.
    #[serde(default)]
    pub start_period: SpecDuration,
    /// Consecutive failures before the replica is unhealthy.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Consecutive successes before it is healthy.
    #[serde(default = "default_successes")]
    pub successes: u32,
    #[serde(default)]
    pub on_failure: OnFailure,
}

fn default_interval() -> SpecDuration {
    SpecDuration::from_secs(10)
}

fn default_timeout() -> SpecDuration {
    SpecDuration::from_secs(1)
}

fn default_failures() -> u32 {
    3
}

fn default_successes() -> u32 {
    1
}

/// The one way a check probes its replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe<'a> {
    Http(&'a HttpCheck),
    Tcp(&'a TcpCheck),
    Exec(&'a [String]),
}

impl Check {
    /// The probe this check runs; `None` when it names none or several
    /// (refused by validation, so never so in a stored spec).
    pub fn probe(&self) -> Option<Probe<'_>> {
        match (&self.http, &self.tcp, &self.exec) {
            (Some(http), None, None) => Some(Probe::Http(http)),
            (None, Some(tcp), None) => Some(Probe::Tcp(tcp)),
            (None, None, Some(exec)) => Some(Probe::Exec(exec)),
            _ => None,
        }
    }

    /// The port it reaches, for HTTP and TCP checks.
    pub fn port(&self) -> Option<u16> {
        match self.probe()? {
            Probe::Http(http) => Some(http.port),
            Probe::Tcp(tcp) => Some(tcp.port),
            Probe::Exec(_) => None,
        }
    }
}
