//! Horizontal autoscaling on CPU and memory targets.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
        let text = super::number_or_text(d)?;
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
