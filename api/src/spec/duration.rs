//! Durations as people write them in specs: `500ms`, `2s`, `1m30s`, `1h`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in whole milliseconds, written with units. Bounds depend on
/// the field and are checked in validation, where the field is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpecDuration(pub u64);

const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];

impl SpecDuration {
    pub const fn from_secs(secs: u64) -> Self {
        SpecDuration(secs * 1000)
    }

    pub const fn from_millis(millis: u64) -> Self {
        SpecDuration(millis)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn to_std(self) -> Duration {
        Duration::from_millis(self.0)
    }

    /// Parses one or more `<number><unit>` parts (`1m30s`); every part needs a unit.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("`{text}` is not a duration such as 500ms, 2s, 1m30s or 1h");
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits == 0 {
                return Err(invalid());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let Some((_, factor)) = UNITS.iter().find(|(name, _)| *name == unit) else {
                return Err(if unit.is_empty() {
                    format!("`{text}` needs a unit: ms, s, m or h")
                } else {
                    invalid()
                });
            };
            total = number.checked_mul(*factor).and_then(|n| total.checked_add(n)).ok_or_else(invalid)?;
            rest = &rest[unit_len..];
        }
        Ok(SpecDuration(total))
    }
}

impl fmt::Display for SpecDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, factor) = UNITS
            .iter()
            .rev()
            .find(|(_, factor)| self.0.is_multiple_of(*factor) && self.0 > 0)
            .copied()
            .unwrap_or(("s", 1000));
        write!(f, "{}{unit}", self.0 / factor)
    }
}

impl Serialize for SpecDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpecDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = super::number_or_text(d)?;
        SpecDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds_and_refuses_the_rest() {
        let table = [
            ("100ms", Ok(100)),
            ("2s", Ok(2000)),
            ("1m30s", Ok(90_000)),
            ("1h", Ok(3_600_000)),
            ("0s", Ok(0)),
            ("5", Err("needs a unit")),
            ("2 s", Err("not a duration")),
            ("1.5s", Err("not a duration")),
            ("3d", Err("not a duration")),
            ("", Err("not a duration")),
            ("99999999999999999h", Err("not a duration")),
        ];
        for (text, want) in table {
            match (SpecDuration::parse(text), want) {
                (Ok(got), Ok(ms)) => assert_eq!(got.0, ms, "{text}"),
                (Err(e), Err(reason)) => assert!(e.contains(reason), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        for (ms, text) in [(100, "100ms"), (2000, "2s"), (90_000, "90s"), (600_000, "10m"), (0, "0s")] {
            assert_eq!(SpecDuration(ms).to_string(), text);
            assert_eq!(SpecDuration::parse(text), Ok(SpecDuration(ms)));
        }
    }
}
