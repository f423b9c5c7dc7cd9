//! Kubernetes-style resource quantities: `250m`, `0.5`, `2` for CPU and
//! `64Mi`, `1Gi`, `500M` for memory.
//!
//! Quantities are parsed from text with exact decimal arithmetic (no floats),
//! so `0.1` CPU is exactly 100 millicores and `1.5Gi` exactly 1610612736 bytes.
//! Both YAML/JSON numbers and strings are accepted, because users write
//! `cpu: 0.5` as often as `cpu: "500m"`.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most CPU a single replica may request: far above any real host, low
/// enough that sums over thousands of replicas cannot overflow.
pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;
/// The smallest memory limit the Docker engine accepts (6 MiB).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// The most memory a single replica may request (16 TiB).
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;

/// CPU in millicores (1000 = one core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuMillis(pub u64);

/// Memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryBytes(pub u64);

/// A decimal number split into integer digits and fraction digits, so that
/// scaling by a power of ten or two stays exact.
struct Decimal<'a> {
    integer: &'a str,
    fraction: &'a str,
}

impl<'a> Decimal<'a> {
    fn parse(text: &'a str) -> Result<Self, String> {
        if text.starts_with('-') {
            return Err("must not be negative".into());
        }
        let (integer, fraction) = text.split_once('.').unwrap_or((text, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (integer.is_empty() && fraction.is_empty()) || !all_digits(integer) || !all_digits(fraction) {
            return Err(format!("`{text}` is not a number"));
        }
        Ok(Decimal { integer, fraction })
    }

    /// `self × multiplier`, rounded up to a whole number; `None` on overflow.
    fn scaled(&self, multiplier: u128) -> Option<u128> {
        if self.integer.len() > 20 || self.fraction.len() > 18 {
            return None;
        }
        let integer: u128 = if self.integer.is_empty() { 0 } else { self.integer.parse().ok()? };
        let mut whole = integer.checked_mul(multiplier)?;
        if !self.fraction.is_empty() {
            let denominator = 10u128.pow(self.fraction.len() as u32);
            let numerator: u128 = self.fraction.parse::<u128>().ok()?.checked_mul(multiplier)?;
            whole = whole.checked_add(numerator.div_ceil(denominator))?;
        }
        Some(whole)
    }
}

impl CpuMillis {
    /// Parses `250m`, `0.5` or `2`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (number, multiplier) = match text.strip_suffix('m') {
            Some(millis) => (millis, 1),
            None => (text, 1000),
        };
        let decimal = Decimal::parse(number)?;
        if multiplier == 1 && !decimal.fraction.is_empty() {
            return Err(format!("`{text}`: millicores must be a whole number"));
        }
        if multiplier == 1000 && decimal.fraction.len() > 3 {
            return Err(format!("`{text}`: the smallest unit of CPU is 1m (0.001)"));
        }
        let millis = decimal
            .scaled(multiplier)
            .filter(|m| *m <= u128::from(MAX_CPU_MILLIS))
            .ok_or_else(|| format!("`{text}` is more than the maximum of {} cores", MAX_CPU_MILLIS / 1000))?;
        if millis == 0 {
            return Err("must be more than zero".into());
        }
        Ok(CpuMillis(millis as u64))
    }
}

impl fmt::Display for CpuMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) { write!(f, "{}", self.0 / 1000) } else { write!(f, "{}m", self.0) }
    }
}

const MEMORY_SUFFIXES: [(&str, u128); 10] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
];

impl MemoryBytes {
    /// Parses `64Mi`, `1.5Gi`, `500M` or a plain number of bytes, at
    /// least a replica's smallest memory (6Mi).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = Self::parse_size(text)?;
        if bytes.0 < MIN_MEMORY_BYTES {
            return Err(format!("`{}` is less than the minimum of 6Mi", text.trim()));
        }
        Ok(bytes)
    }

    /// Parses a size in the same units, with no minimum (a log file's bound).
    pub fn parse_size(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (number, multiplier) = MEMORY_SUFFIXES
            .iter()
            .find_map(|(suffix, m)| text.strip_suffix(suffix).map(|n| (n, *m)))
            .unwrap_or((text, 1));
        if number.ends_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!(
                "`{text}` has an unknown unit (use Ki, Mi, Gi, Ti, k, M, G, T or plain bytes)"
            ));
        }
        let bytes = Decimal::parse(number)?
            .scaled(multiplier)
            .filter(|b| *b <= u128::from(MAX_MEMORY_BYTES))
            .ok_or_else(|| format!("`{text}` is more than the maximum of 16Ti"))?;
        Ok(MemoryBytes(bytes as u64))
    }
}

impl fmt::Display for MemoryBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        for (suffix, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if self.0.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Accepts a YAML/JSON string or number and hands its text to `parse`.
struct QuantityVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for QuantityVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if !v.is_finite() {
            return Err(E::custom("must be a finite number"));
        }
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for CpuMillis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor {
            expecting: "a CPU quantity such as 250m, 0.5 or 2",
            parse: CpuMillis::parse,
        })
    }
}

impl<'de> Deserialize<'de> for MemoryBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor {
            expecting: "a memory quantity such as 64Mi, 1Gi or 500M",
            parse: MemoryBytes::parse,
        })
    }
}

impl Serialize for CpuMillis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for MemoryBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        let table: &[(&str, Result<u64, &str>)] = &[
            ("250m", Ok(250)),
            ("0.5", Ok(500)),
            ("2", Ok(2000)),
            (".1", Ok(100)),
            ("1.25", Ok(1250)),
            ("0", Err("more than zero")),
            ("0m", Err("more than zero")),
            ("-1", Err("negative")),
            ("0.0001", Err("smallest unit")),
            ("1.5m", Err("whole number")),
            ("abc", Err("not a number")),
            ("1e3", Err("not a number")),
            ("99999999", Err("maximum")),
            ("", Err("not a number")),
        ];
        for (text, want) in table {
            match (CpuMillis::parse(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got.0, *want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn memory_quantities() {
        let table: &[(&str, Result<u64, &str>)] = &[
            ("64Mi", Ok(64 << 20)),
            ("1Gi", Ok(1 << 30)),
            ("1.5Gi", Ok(3 << 29)),
            ("500M", Ok(500_000_000)),
            ("10000000", Ok(10_000_000)),
            ("1Ki", Err("minimum")),
            ("-64Mi", Err("negative")),
            ("64Xi", Err("unknown unit")),
            ("64mb", Err("unknown unit")),
            ("100Pi", Err("maximum")),
            ("Mi", Err("not a number")),
        ];
        for (text, want) in table {
            match (MemoryBytes::parse(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got.0, *want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn display_parses_back_to_the_same_quantity() {
        for millis in [1, 250, 1000, 1500, 64_000] {
            let cpu = CpuMillis(millis);
            assert_eq!(CpuMillis::parse(&cpu.to_string()), Ok(cpu));
        }
        for bytes in [MIN_MEMORY_BYTES, 64 << 20, (1 << 30) + 1, 3 << 29, 500_000_000] {
            let mem = MemoryBytes(bytes);
            assert_eq!(MemoryBytes::parse(&mem.to_string()), Ok(mem));
        }
    }
}
