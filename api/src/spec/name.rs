//! Workload names: DNS labels, because they become parts of container names
//! and, later, DNS names.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

/// A workload's name: an RFC 1123 DNS label, because it becomes part of
/// container names and, later, DNS names.
///
/// Shared, not copied: every allocation, index entry, journal entry and
/// placement view names its workload, and a million of them cloned a
/// million strings (a fifth of a reconciler pass at that size was copying
/// names). A clone is a reference count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct WorkloadName(Arc<str>);

impl WorkloadName {
    pub fn parse(text: &str) -> Result<Self, String> {
        dns_label(text)?;
        Ok(WorkloadName(text.into()))
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

/// A name that becomes part of DNS names or is shown beside them (a check's
/// name, a port's): an RFC 1123 label, unique within its workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DnsLabel(String);

impl DnsLabel {
    pub fn parse(text: &str) -> Result<Self, String> {
        dns_label(text)?;
        Ok(DnsLabel(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DnsLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DnsLabel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DnsLabel::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `text` is an RFC 1123 DNS label, saying what is wrong if not.
pub(crate) fn dns_label(text: &str) -> Result<(), String> {
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
    Ok(())
}
