//! Placement constraints on node labels, written as short expressions:
//! `zone == a`, `disk != hdd`, `zone in (a, b)`, `zone not in (c)`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Constraint {
    Equals { key: String, value: String },
    NotEquals { key: String, value: String },
    In { key: String, values: Vec<String> },
    NotIn { key: String, values: Vec<String> },
}

/// Label keys and values: what Kubernetes allows, so that labels copied from
/// there work here.
fn valid_label_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 253
        && token.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn token(text: &str, what: &str, expression: &str) -> Result<String, String> {
    let text = text.trim();
    if valid_label_token(text) {
        Ok(text.to_owned())
    } else {
        Err(format!("`{expression}`: {what} `{text}` must be letters, digits, '.', '_', '-' or '/'"))
    }
}

fn value_list(text: &str, expression: &str) -> Result<Vec<String>, String> {
    let inner = text.trim().strip_prefix('(').and_then(|t| t.strip_suffix(')')).ok_or_else(|| {
        format!("`{expression}`: the values of `in` go in parentheses, as `zone in (a, b)`")
    })?;
    let values = inner.split(',').map(|v| token(v, "value", expression)).collect::<Result<Vec<_>, _>>()?;
    Ok(values)
}

impl Constraint {
    pub fn parse(expression: &str) -> Result<Self, String> {
        if let Some((key, value)) = expression.split_once("==") {
            return Ok(Constraint::Equals {
                key: token(key, "key", expression)?,
                value: token(value, "value", expression)?,
            });
        }
        if let Some((key, value)) = expression.split_once("!=") {
            return Ok(Constraint::NotEquals {
                key: token(key, "key", expression)?,
                value: token(value, "value", expression)?,
            });
        }
        if let Some((key, values)) = expression.split_once(" not in ") {
            return Ok(Constraint::NotIn {
                key: token(key, "key", expression)?,
                values: value_list(values, expression)?,
            });
        }
        if let Some((key, values)) = expression.split_once(" in ") {
            return Ok(Constraint::In {
                key: token(key, "key", expression)?,
                values: value_list(values, expression)?,
            });
        }
        Err(format!(
            "`{expression}` is not a constraint; write `key == value`, `key != value` or `key in (a, b)`"
        ))
    }

    /// Whether a node with these labels satisfies the constraint. A missing
    /// label fails `==` and `in`, and passes `!=` and `not in`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Equals { key, value } => labels.get(key) == Some(value),
            Constraint::NotEquals { key, value } => labels.get(key) != Some(value),
            Constraint::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            Constraint::NotIn { key, values } => !labels.get(key).is_some_and(|v| values.contains(v)),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Equals { key, value } => write!(f, "{key} == {value}"),
            Constraint::NotEquals { key, value } => write!(f, "{key} != {value}"),
            Constraint::In { key, values } => write!(f, "{key} in ({})", values.join(", ")),
            Constraint::NotIn { key, values } => write!(f, "{key} not in ({})", values.join(", ")),
        }
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Constraint::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let labels: BTreeMap<String, String> =
            [("zone".to_owned(), "a".to_owned()), ("disk".to_owned(), "ssd".to_owned())].into();
        let table = [
            ("zone == a", true),
            ("zone == b", false),
            ("zone != b", true),
            ("gpu != yes", true),
            ("zone in (a, b)", true),
            ("zone in (c)", false),
            ("gpu in (yes)", false),
            ("zone not in (b, c)", true),
            ("disk not in (ssd)", false),
        ];
        for (expression, want) in table {
            let constraint = Constraint::parse(expression).expect(expression);
            assert_eq!(constraint.matches(&labels), want, "{expression}");
            assert_eq!(Constraint::parse(&constraint.to_string()).as_ref(), Ok(&constraint));
        }
    }

    #[test]
    fn malformed_constraints_are_refused() {
        for (expression, reason) in [
            ("zone", "not a constraint"),
            ("zone == ", "value"),
            ("zo ne == a", "key"),
            ("zone in a, b", "parentheses"),
            ("zone in (a, b c)", "value"),
        ] {
            let error = Constraint::parse(expression).expect_err(expression);
            assert!(error.contains(reason), "{expression}: {error}");
        }
    }
}
