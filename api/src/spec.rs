//! The workload spec: the YAML a user writes, and the one place where it is
//! validated. The CLI validates before it sends (to show `file:line:column`),
//! the server validates again on every write (it trusts no client), and both
//! run exactly this code.
//!
//! Value-level rules (a quantity, a name, a constraint) live in `Deserialize`
//! impls so that the parser reports them with their line and column;
//! rules that relate several fields live in [`WorkloadSpec::validate`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::constraint::Constraint;
use crate::quantity::{CpuMillis, MemoryBytes};
use crate::spec_error::{SpecError, locate_path};

/// Upper bound on replicas of one workload: a typo guard, not a scale limit.
pub const MAX_REPLICAS: u32 = 100_000;

/// One autoscaling step grows replicas by at most this percent (11×).
pub const MAX_SCALE_UP_PERCENT: u32 = 1000;
/// Largest spec document accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// A workload's name: an RFC 1123 DNS label, because it becomes part of
/// container names and, later, DNS names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct WorkloadName(String);

impl WorkloadName {
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if text.is_empty() || text.len() > 63 {
            return Err(format!("`{text}` must be 1 to 63 characters long"));
        }
        if !text.chars().all(valid_char) {
            return Err(format!("`{text}` may contain only lowercase letters, digits and '-'"));
        }
        if text.starts_with('-') || text.ends_with('-') {
            return Err(format!("`{text}` must start and end with a letter or digit"));
        }
        Ok(WorkloadName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by name be searched with a plain `&str`; sound because
/// the derived `Ord` and `Hash` are those of the inner string.
impl std::borrow::Borrow<str> for WorkloadName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkloadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkloadName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        WorkloadName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Which runtime on the agent runs the replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Docker,
    Process,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Docker => "docker",
            Driver::Process => "process",
        })
    }
}

/// When an exited replica is started again (as Docker's and Kubernetes' policies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// How the scheduler ranks nodes that can hold a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// Fill the fullest node that fits first, to keep whole nodes free.
    #[default]
    Binpack,
    /// Prefer the emptiest node, to spread load and blast radius.
    Spread,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A port the replica listens on, and optionally the host port it is published on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// The port inside the container.
    pub container: u16,
    /// The port on the host; absent or 0 lets the agent choose a free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
}

/// What one replica asks of its node; placement reserves exactly this much.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default = "default_cpu")]
    pub cpu: CpuMillis,
    #[serde(default = "default_memory")]
    pub memory: MemoryBytes,
}

impl Default for Resources {
    fn default() -> Self {
        Resources { cpu: default_cpu(), memory: default_memory() }
    }
}

fn default_cpu() -> CpuMillis {
    CpuMillis(100)
}

fn default_memory() -> MemoryBytes {
    MemoryBytes(64 << 20)
}

/// A utilisation target as a percent of the request: `50` or `"50%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(pub u32);

impl Percent {
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = text.trim().trim_end_matches('%').trim();
        match number.parse::<u32>() {
            Ok(p) if (1..=1000).contains(&p) => Ok(Percent(p)),
            Ok(_) => Err(format!("`{text}` must be between 1% and 1000%")),
            Err(_) => Err(format!("`{text}` is not a whole percent such as 50 or \"50%\"")),
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        Percent::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Horizontal autoscaling between `min` and `max` on CPU and/or memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    #[serde(default = "default_autoscale_min")]
    pub min: u32,
    pub max: u32,
    /// Target CPU use as a percent of the CPU request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Percent>,
    /// Target memory use as a percent of the memory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Percent>,
    /// Changes within this percent of the target are ignored.
    #[serde(default = "default_tolerance")]
    pub tolerance: u32,
    /// Seconds a lower recommendation must hold before replicas are removed.
    #[serde(default = "default_scale_down_window")]
    pub scale_down_window: u32,
    /// One scale-up step adds at most the larger of this percent of the
    /// current replicas...
    #[serde(default = "default_scale_up_percent")]
    pub scale_up_percent: u32,
    /// ...and this many replicas.
    #[serde(default = "default_scale_up_replicas")]
    pub scale_up_replicas: u32,
}

fn default_autoscale_min() -> u32 {
    1
}

fn default_tolerance() -> u32 {
    10
}

fn default_scale_down_window() -> u32 {
    30
}

fn default_scale_up_percent() -> u32 {
    100
}

fn default_scale_up_replicas() -> u32 {
    4
}

fn default_replicas() -> u32 {
    1
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The desired state of one workload, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: WorkloadName,
    #[serde(default, skip_serializing_if = "is_default")]
    pub driver: Driver,
    /// The Docker image; required by the docker driver, refused by the process driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Program and arguments; for Docker it replaces the image's default command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub placement: PlacementStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

/// A rule broken by a combination of fields, found after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

fn field_error(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), reason: reason.into() }
}

fn valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl WorkloadSpec {
    /// Checks the rules that span several fields; value rules were checked while parsing.
    pub fn validate(&self) -> Result<(), FieldError> {
        match (self.driver, &self.image) {
            (Driver::Docker, None) => return Err(field_error("image", "the docker driver needs an image")),
            (Driver::Process, Some(_)) => {
                return Err(field_error("image", "the process driver runs `command` and takes no image"));
            }
            (Driver::Process, None) if self.command.is_empty() => {
                return Err(field_error("command", "the process driver needs a command to run"));
            }
            _ => {}
        }
        if let Some(image) = &self.image
            && (image.is_empty()
                || image.len() > 255
                || image.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(field_error("image", "must be 1 to 255 characters with no spaces"));
        }
        if self.command.len() > 1024 {
            return Err(field_error("command", "has more than 1024 arguments"));
        }
        if let Some(i) = self.command.iter().position(|a| a.contains('\0')) {
            return Err(field_error(format!("command[{i}]"), "contains a NUL byte"));
        }
        if self.env.len() > 1024 {
            return Err(field_error("env", "has more than 1024 variables"));
        }
        for (key, value) in &self.env {
            if !valid_env_key(key) {
                return Err(field_error(
                    format!("env.{key}"),
                    "a variable name is letters, digits and '_', not starting with a digit",
                ));
            }
            if value.contains('\0') {
                return Err(field_error(format!("env.{key}"), "contains a NUL byte"));
            }
        }
        if self.replicas > MAX_REPLICAS {
            return Err(field_error(
                "replicas",
                format!("{} is more than the maximum of {MAX_REPLICAS}", self.replicas),
            ));
        }
        self.validate_ports()?;
        if self.constraints.len() > 64 {
            return Err(field_error("constraints", "has more than 64 constraints"));
        }
        if let Some(auto) = &self.autoscale {
            if auto.min == 0 {
                return Err(field_error("autoscale.min", "must be at least 1"));
            }
            if auto.max < auto.min {
                return Err(field_error(
                    "autoscale.max",
                    format!("{} is less than min {}", auto.max, auto.min),
                ));
            }
            if auto.max > MAX_REPLICAS {
                return Err(field_error(
                    "autoscale.max",
                    format!("is more than the maximum of {MAX_REPLICAS}"),
                ));
            }
            if auto.cpu.is_none() && auto.memory.is_none() {
                return Err(field_error("autoscale", "needs a cpu or memory target"));
            }
            if auto.tolerance > 100 {
                return Err(field_error("autoscale.tolerance", "is a percent from 0 to 100"));
            }
            if auto.scale_down_window > 3600 {
                return Err(field_error("autoscale.scale_down_window", "is at most 3600 seconds"));
            }
            if auto.scale_up_percent > MAX_SCALE_UP_PERCENT {
                return Err(field_error(
                    "autoscale.scale_up_percent",
                    format!("{} is more than the maximum of {MAX_SCALE_UP_PERCENT}", auto.scale_up_percent),
                ));
            }
            if auto.scale_up_replicas > MAX_REPLICAS {
                return Err(field_error(
                    "autoscale.scale_up_replicas",
                    format!("{} is more than the maximum of {MAX_REPLICAS}", auto.scale_up_replicas),
                ));
            }
            if auto.scale_up_percent == 0 && auto.scale_up_replicas == 0 {
                return Err(field_error(
                    "autoscale.scale_up_replicas",
                    "scale-up needs a step of at least 1",
                ));
            }
        }
        Ok(())
    }

    fn validate_ports(&self) -> Result<(), FieldError> {
        if self.ports.len() > 100 {
            return Err(field_error("ports", "has more than 100 ports"));
        }
        let mut container_ports = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            if port.container == 0 {
                return Err(field_error(format!("ports[{i}].container"), "must be between 1 and 65535"));
            }
            if !container_ports.insert((port.container, port.protocol)) {
                return Err(field_error(
                    format!("ports[{i}].container"),
                    format!("port {} is listed twice", port.container),
                ));
            }
            if let Some(host) = port.host.filter(|h| *h != 0)
                && !host_ports.insert((host, port.protocol))
            {
                return Err(field_error(
                    format!("ports[{i}].host"),
                    format!("host port {host} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// Host ports this workload's replicas bind, which no two replicas on one node may share.
    pub fn fixed_host_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.ports.iter().filter_map(|p| p.host.filter(|h| *h != 0).map(|h| (h, p.protocol)))
    }
}

fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 64;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses and validates a spec written in YAML.
pub fn parse_yaml(text: &str) -> Result<WorkloadSpec, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::whole(format!("is larger than {MAX_SPEC_BYTES} bytes")));
    }
    let only_comments = text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if only_comments {
        return Err(SpecError::whole("is empty; a spec needs at least `name` and `image`"));
    }
    let spec = match serde_saphyr::from_str_with_options::<WorkloadSpec>(text, yaml_options()) {
        Ok(spec) => spec,
        Err(error) => return Err(SpecError::from_yaml(text, &error, yaml_error_path(text))),
    };
    spec.validate().map_err(|e| {
        // A missing field has no line of its own: point at the block it belongs in.
        let location =
            std::iter::successors(Some(e.path.as_str()), |p| p.rsplit_once('.').map(|(parent, _)| parent))
                .find_map(|p| locate_path(text, p))
                .or(Some((1, 1)));
        SpecError::at(e.path, location, e.reason)
    })?;
    Ok(spec)
}

/// The field path of a YAML error, found by parsing again into a generic tree
/// and deserializing that with path tracking (the streaming parser cannot
/// report paths itself).
fn yaml_error_path(text: &str) -> Option<String> {
    let tree: serde_json::Value = serde_saphyr::from_str_with_options(text, yaml_options()).ok()?;
    match serde_path_to_error::deserialize::<_, WorkloadSpec>(tree) {
        Err(e) => Some(e.path().to_string()).filter(|p| p != "."),
        Ok(_) => None,
    }
}

/// Parses and validates a spec sent as JSON (the API's wire format).
pub fn parse_json(bytes: &[u8]) -> Result<WorkloadSpec, SpecError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(SpecError::whole(format!("is larger than {MAX_SPEC_BYTES} bytes")));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let spec: WorkloadSpec = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = Some(e.path().to_string()).filter(|p| p != ".");
        let inner = e.into_inner();
        let location = (inner.line() > 0).then(|| (inner.line(), inner.column()));
        SpecError::from_json(path, location, &inner)
    })?;
    de.end().map_err(|e| SpecError::from_json(None, Some((e.line(), e.column())), &e))?;
    spec.validate().map_err(|e| SpecError::at(e.path, None, e.reason))?;
    Ok(spec)
}
