//! The rules that relate several fields of a spec, checked after parsing.

use std::collections::BTreeSet;

use super::secrets::{EnvValue, validate_secret_name};

use super::{
    Driver, MAX_CHECKS, MAX_REPLICAS, MAX_SCALE_UP_PERCENT, MAX_SPEC_DURATION, MIN_CHECK_PERIOD, Probe,
    Protocol, ServiceSpec, SpecDuration, WorkloadSpec,
};

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
        if let Some(name) = &self.pull_secret {
            validate_secret_name(name).map_err(|reason| field_error("pull_secret", reason))?;
            if self.driver == Driver::Process {
                return Err(field_error("pull_secret", "the process driver pulls no image"));
            }
        }
        if self.driver == Driver::Process && self.pull != super::PullPolicy::default() {
            return Err(field_error("pull", "the process driver pulls no image"));
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
            match value {
                EnvValue::Text(text) if text.contains('\0') => {
                    return Err(field_error(format!("env.{key}"), "contains a NUL byte"));
                }
                EnvValue::Secret { secret } => validate_secret_name(secret)
                    .map_err(|reason| field_error(format!("env.{key}.secret"), reason))?,
                EnvValue::Text(_) => {}
            }
        }
        self.validate_secret_mounts()?;
        self.validate_volumes()?;
        if self.replicas > MAX_REPLICAS {
            return Err(field_error(
                "replicas",
                format!("{} is more than the maximum of {MAX_REPLICAS}", self.replicas),
            ));
        }
        self.validate_ports()?;
        self.validate_checks()?;
        self.validate_update()?;
        if self.service != ServiceSpec::default() && self.service_ports().next().is_none() {
            return Err(field_error(
                "service",
                "balances the traffic of named ports, and `ports` names none",
            ));
        }
        within("service.drain".into(), self.service.drain, SpecDuration(0))?;
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

    /// Files from secrets: docker only (a process replica has no filesystem
    /// of its own to put them in), absolute paths, one secret per path.
    fn validate_secret_mounts(&self) -> Result<(), FieldError> {
        if self.secrets.len() > 64 {
            return Err(field_error("secrets", "has more than 64 entries"));
        }
        let mut paths = std::collections::BTreeSet::new();
        for (i, mount) in self.secrets.iter().enumerate() {
            validate_secret_name(&mount.name)
                .map_err(|reason| field_error(format!("secrets[{i}].name"), reason))?;
            if self.driver == Driver::Process {
                return Err(field_error(
                    format!("secrets[{i}]"),
                    "secret files need the docker driver; a process replica takes secrets through env",
                ));
            }
            if !plain_absolute(&mount.path) || mount.path.ends_with('/') || mount.path.len() > 100 {
                return Err(field_error(
                    format!("secrets[{i}].path"),
                    format!(
                        "`{}` must be an absolute file path without `..`, at most 100 characters",
                        mount.path
                    ),
                ));
            }
            if !paths.insert(mount.path.as_str()) {
                return Err(field_error(
                    format!("secrets[{i}].path"),
                    format!("`{}` is used twice", mount.path),
                ));
            }
        }
        Ok(())
    }

    /// Volumes: docker only (a process shares its node's filesystem),
    /// absolute plain paths, one volume per path and none on a secret's
    /// file, one name per named volume.
    fn validate_volumes(&self) -> Result<(), FieldError> {
        if self.volumes.len() > 32 {
            return Err(field_error("volumes", "has more than 32 volumes"));
        }
        let mut paths = BTreeSet::new();
        let mut names = BTreeSet::new();
        for (i, volume) in self.volumes.iter().enumerate() {
            if self.driver == Driver::Process {
                return Err(field_error(
                    format!("volumes[{i}]"),
                    "volumes need the docker driver; a process replica uses its node's filesystem",
                ));
            }
            if !plain_absolute(&volume.path) || volume.path == "/" || volume.path.len() > 200 {
                return Err(field_error(
                    format!("volumes[{i}].path"),
                    format!(
                        "`{}` must be an absolute path below `/` without `..`, at most 200 characters",
                        volume.path
                    ),
                ));
            }
            let normal = volume.path.trim_end_matches('/');
            if !paths.insert(normal) {
                return Err(field_error(
                    format!("volumes[{i}].path"),
                    format!("`{}` holds two volumes", volume.path),
                ));
            }
            if let Some(secret) = self.secrets.iter().find(|s| s.path == normal) {
                return Err(field_error(
                    format!("volumes[{i}].path"),
                    format!("`{}` is the file of secret `{}`", volume.path, secret.name),
                ));
            }
            if !names.insert((volume.host, volume.name.as_str())) {
                return Err(field_error(
                    format!("volumes[{i}].name"),
                    format!("`{}` names two volumes", volume.name),
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
        let mut names = BTreeSet::new();
        let mut ingress_ports = BTreeSet::new();
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
            if let Some(name) = &port.name
                && !names.insert(name.as_str())
            {
                return Err(field_error(format!("ports[{i}].name"), format!("`{name}` names two ports")));
            }
            match port.ingress {
                Some(_) if port.name.is_none() => {
                    return Err(field_error(
                        format!("ports[{i}].ingress"),
                        "a port published on every node needs a `name`",
                    ));
                }
                Some(0) => {
                    return Err(field_error(format!("ports[{i}].ingress"), "must be between 1 and 65535"));
                }
                Some(ingress) if !ingress_ports.insert((ingress, port.protocol)) => {
                    return Err(field_error(
                        format!("ports[{i}].ingress"),
                        format!("ingress port {ingress} is listed twice"),
                    ));
                }
                _ => {}
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

    fn validate_checks(&self) -> Result<(), FieldError> {
        if self.checks.len() > MAX_CHECKS {
            return Err(field_error("checks", format!("has more than {MAX_CHECKS} checks")));
        }
        let mut names = BTreeSet::new();
        for (i, check) in self.checks.iter().enumerate() {
            let at = |field: &str| format!("checks[{i}].{field}");
            if !names.insert(check.name.as_str()) {
                return Err(field_error(at("name"), format!("`{}` names two checks", check.name)));
            }
            let Some(probe) = check.probe() else {
                return Err(field_error(
                    format!("checks[{i}]"),
                    "a check is exactly one of `http`, `tcp` or `exec`",
                ));
            };
            match probe {
                Probe::Http(http) => {
                    if !http.path.starts_with('/')
                        || http.path.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(field_error(at("http.path"), "must start with '/' and hold no spaces"));
                    }
                    self.check_port_exposed(http.port, at("http.port"))?;
                }
                Probe::Tcp(tcp) => self.check_port_exposed(tcp.port, at("tcp.port"))?,
                Probe::Exec(command) => {
                    if command.is_empty() || command[0].is_empty() {
                        return Err(field_error(at("exec"), "needs a program to run"));
                    }
                    if command.iter().any(|a| a.contains('\0')) {
                        return Err(field_error(at("exec"), "contains a NUL byte"));
                    }
                }
            }
            within(at("interval"), check.interval, MIN_CHECK_PERIOD)?;
            within(at("timeout"), check.timeout, MIN_CHECK_PERIOD)?;
            within(at("start_period"), check.start_period, SpecDuration(0))?;
            for (field, count) in [("failures", check.failures), ("successes", check.successes)] {
                if !(1..=100).contains(&count) {
                    return Err(field_error(at(field), format!("{count} is not between 1 and 100")));
                }
            }
        }
        Ok(())
    }

    /// HTTP and TCP checks reach a port the replica listens on, so it must be one of `ports`.
    fn check_port_exposed(&self, port: u16, path: String) -> Result<(), FieldError> {
        if self.ports.iter().any(|p| p.container == port && p.protocol == Protocol::Tcp) {
            return Ok(());
        }
        Err(field_error(path, format!("port {port} is not one of the workload's TCP `ports`")))
    }

    fn validate_update(&self) -> Result<(), FieldError> {
        let update = &self.update;
        if update.max_parallel == 0 {
            return Err(field_error("update.max_parallel", "must be at least 1"));
        }
        if update.max_surge == 0 && update.max_unavailable == 0 {
            return Err(field_error(
                "update.max_unavailable",
                "is 0 and so is max_surge: a rollout could never replace a replica",
            ));
        }
        for (field, value) in [
            ("update.max_surge", update.max_surge),
            ("update.max_unavailable", update.max_unavailable),
            ("update.canary", update.canary),
        ] {
            if value > MAX_REPLICAS {
                return Err(field_error(
                    field,
                    format!("{value} is more than the maximum of {MAX_REPLICAS}"),
                ));
            }
        }
        within("update.min_healthy_time".into(), update.min_healthy_time, SpecDuration(0))?;
        within("update.healthy_deadline".into(), update.healthy_deadline, MIN_CHECK_PERIOD)?;
        within("update.progress_deadline".into(), update.progress_deadline, MIN_CHECK_PERIOD)?;
        if update.healthy_deadline <= update.min_healthy_time {
            return Err(field_error(
                "update.healthy_deadline",
                format!(
                    "{} must be longer than min_healthy_time {}",
                    update.healthy_deadline, update.min_healthy_time
                ),
            ));
        }
        if update.progress_deadline < update.healthy_deadline {
            return Err(field_error(
                "update.progress_deadline",
                format!(
                    "{} must be at least healthy_deadline {}",
                    update.progress_deadline, update.healthy_deadline
                ),
            ));
        }
        Ok(())
    }
}

/// An absolute path of plain names: no `.` or `..` to climb out of where
/// it points.
fn plain_absolute(path: &str) -> bool {
    let path = std::path::Path::new(path);
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)))
}

/// A duration field between `min` and [`MAX_SPEC_DURATION`].
fn within(path: String, value: SpecDuration, min: SpecDuration) -> Result<(), FieldError> {
    if value < min || value > MAX_SPEC_DURATION {
        return Err(field_error(path, format!("{value} is not between {min} and {MAX_SPEC_DURATION}")));
    }
    Ok(())
}
