//! A spec error a person can act on: the field path, the line and column,
//! and the reason, in one value that the API returns as JSON and the CLI
//! prints as `file:line:column`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecError {
    /// Dotted path of the offending field (`resources.cpu`, `ports[1].host`);
    /// absent when the document as a whole is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub reason: String,
}

impl SpecError {
    pub(crate) fn whole(reason: impl Into<String>) -> Self {
        SpecError { field: None, line: None, column: None, reason: reason.into() }
    }

    pub(crate) fn at(field: String, location: Option<(usize, usize)>, reason: String) -> Self {
        SpecError { field: Some(field), line: location.map(|l| l.0), column: location.map(|l| l.1), reason }
    }

    pub(crate) fn from_yaml(text: &str, error: &serde_saphyr::Error, field: Option<String>) -> Self {
        let location = error.location().map(|l| (l.line() as usize, l.column() as usize));
        let mut reason = error.without_snippet().to_string();
        if let Some((line, column)) = location {
            let suffix = format!(" at line {line}, column {column}");
            if let Some(stripped) = reason.strip_suffix(&suffix) {
                reason = stripped.to_owned();
            }
        }
        let location = location.or_else(|| field.as_deref().and_then(|f| locate_path(text, f)));
        SpecError { field, line: location.map(|l| l.0), column: location.map(|l| l.1), reason }
    }

    pub(crate) fn from_json(
        field: Option<String>,
        location: Option<(usize, usize)>,
        error: &serde_json::Error,
    ) -> Self {
        let mut reason = error.to_string();
        if let Some((line, column)) = location {
            let suffix = format!(" at line {line} column {column}");
            if let Some(stripped) = reason.strip_suffix(&suffix) {
                reason = stripped.to_owned();
            }
        }
        SpecError { field, line: location.map(|l| l.0), column: location.map(|l| l.1), reason }
    }

    /// `file:line:column: field: reason`, the form editors and terminals link.
    pub fn render(&self, file: &str) -> String {
        let mut out = file.to_owned();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                out.push_str(&format!(":{column}"));
            }
        }
        match &self.field {
            Some(field) => format!("{out}: field `{field}`: {}", self.reason),
            None => format!("{out}: {}", self.reason),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("spec"))
    }
}

impl std::error::Error for SpecError {}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some((index, tail)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Segment::Index(i));
            }
            rest = tail.trim_start_matches('[');
        }
    }
    out
}

/// Finds the line and column (1-based) of a field path in block-style YAML,
/// for errors found after parsing, when the parser's positions are gone.
/// Flow-style documents may not be found; the caller then reports the path alone.
pub(crate) fn locate_path(text: &str, path: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut parent_indent: isize = -1;
    let mut start = 0;
    let mut found = None;
    for segment in segments(path) {
        let mut items_seen = 0;
        let mut hit = None;
        for (n, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = (line.len() - trimmed.len()) as isize;
            if n > start && indent <= parent_indent {
                break;
            }
            match segment {
                Segment::Key(key) => {
                    let (column, rest) = match trimmed.strip_prefix("- ") {
                        Some(rest) if n == start => (indent + 2, rest),
                        _ => (indent, trimmed),
                    };
                    let is_key = rest.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':'));
                    if is_key && column > parent_indent {
                        hit = Some((n, column, n + 1));
                        break;
                    }
                }
                Segment::Index(i) => {
                    if trimmed.starts_with('-') && indent > parent_indent {
                        if items_seen == i {
                            hit = Some((n, indent, n));
                            break;
                        }
                        items_seen += 1;
                    }
                }
            }
        }
        let (line, column, next) = hit?;
        found = Some((line + 1, column as usize + 1));
        parent_indent = column;
        start = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_and_list_items() {
        let yaml = "name: web\nresources:\n  cpu: 1\nautoscale:\n  min: 3\n  max: 2\nports:\n  - container: 80\n  - container: 81\n    host: 8080\n";
        assert_eq!(locate_path(yaml, "autoscale.max"), Some((6, 3)));
        assert_eq!(locate_path(yaml, "ports[1].host"), Some((10, 5)));
        assert_eq!(locate_path(yaml, "ports[0].container"), Some((8, 5)));
        assert_eq!(locate_path(yaml, "name"), Some((1, 1)));
        assert_eq!(locate_path(yaml, "missing"), None);
    }
}
