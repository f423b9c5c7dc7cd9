//! Reading a spec from YAML (what users write) or JSON (the API's wire
//! format), with errors that name the field, the line and the column.

use super::{MAX_SPEC_BYTES, WorkloadSpec};
use crate::spec_error::{SpecError, locate_path};

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
