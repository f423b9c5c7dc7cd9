//! Secrets in a spec: an environment variable's value taken from a secret
//! (`env: {DB_PASSWORD: {secret: db-password}}`) and secrets mounted as
//! files (`secrets: [{name: db-password, path: /run/secrets/db}]`). The
//! spec holds only the secret's name; its value never enters a spec.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// One environment variable's value: text, or a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    Text(String),
    Secret { secret: String },
}

impl EnvValue {
    /// The secret this value names, if it is one.
    pub fn secret(&self) -> Option<&str> {
        match self {
            EnvValue::Secret { secret } => Some(secret),
            EnvValue::Text(_) => None,
        }
    }
}

impl From<&str> for EnvValue {
    fn from(text: &str) -> Self {
        EnvValue::Text(text.to_owned())
    }
}

/// A string (numbers and booleans written bare count as their text), or a
/// map with the one key `secret`: anything else is an error that says so.
impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = EnvValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or {secret: NAME}")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(text.to_owned()))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(text))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(n.to_string()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(n.to_string()))
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Text(b.to_string()))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<EnvValue, M::Error> {
                let mut secret = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "secret" {
                        return Err(de::Error::unknown_field(&key, &["secret"]));
                    }
                    secret = Some(map.next_value::<String>()?);
                }
                secret
                    .map(|secret| EnvValue::Secret { secret })
                    .ok_or_else(|| de::Error::missing_field("secret"))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// A secret written into each replica's filesystem, readable by it alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretMount {
    pub name: String,
    /// Absolute path inside the container.
    pub path: String,
}

/// A secret's name: a DNS label, as workload names are, so it reads the
/// same in a spec, a URL and a log line.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    super::name::dns_label(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_text_or_a_named_secret() {
        let parsed: std::collections::BTreeMap<String, EnvValue> =
            serde_json::from_str(r#"{"A": "x", "B": 8080, "C": {"secret": "db"}}"#).expect("parse");
        assert_eq!(parsed["A"], EnvValue::Text("x".into()));
        assert_eq!(parsed["B"], EnvValue::Text("8080".into()));
        assert_eq!(parsed["C"].secret(), Some("db"));
        let back = serde_json::to_string(&parsed).expect("json");
        assert_eq!(back, r#"{"A":"x","B":"8080","C":{"secret":"db"}}"#);
        let wrong = serde_json::from_str::<EnvValue>(r#"{"secrets": "db"}"#).expect_err("unknown key");
        assert!(wrong.to_string().contains("unknown field `secrets`"), "{wrong}");
        let empty = serde_json::from_str::<EnvValue>("{}").expect_err("no key");
        assert!(empty.to_string().contains("missing field `secret`"), "{empty}");
    }
}
