//! The rules that relate several fields of a spec, checked after parsing.

use std::collections::BTreeSet;

use super::{Driver, MAX_REPLICAS, MAX_SCALE_UP_PERCENT, WorkloadSpec};

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
}
