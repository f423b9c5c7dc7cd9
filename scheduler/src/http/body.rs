//! Reading request bodies with the checks every write shares: a size limit
//! (413), a content type we understand (415), and a decode error that names
//! the field (400).

use axum::body::Body;
use axum::http::{HeaderMap, header};
use flotilla_api::WorkloadSpec;
use flotilla_api::spec::MAX_SPEC_BYTES;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body other than a spec or a node's (scale, membership):
/// these are tiny.
const MAX_SMALL_BODY: usize = 64 * 1024;
/// Largest body an agent sends of its allocations (heartbeats with their
/// usage, state reports): about 80 bytes an allocation in a heartbeat and
/// 300 in a report, and a node of many cores can hold thousands. Refused,
/// a heartbeat would leave a busy node to be marked down.
const MAX_NODE_BODY: usize = 16 << 20;

enum Format {
    Json,
    Yaml,
}

fn format_of(headers: &HeaderMap, allow_yaml: bool) -> Result<Format, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match content_type.as_str() {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" if allow_yaml => Ok(Format::Yaml),
        other => {
            let accepted =
                if allow_yaml { "application/json or application/yaml" } else { "application/json" };
            let got = if other.is_empty() { "no content type".to_owned() } else { format!("`{other}`") };
            Err(ApiError::UnsupportedMediaType(format!("expected {accepted}, got {got}")))
        }
    }
}

/// The whole body, if it is at most `limit` bytes. A body that never
/// arrived whole (the client gave up and reset the stream) is not "too
/// large": calling it that hid the cause of failed heartbeats under load.
async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(ApiError::PayloadTooLarge(limit)),
        Err(error) => Err(ApiError::BadRequest(format!("the request body did not arrive whole: {error}"))),
    }
}

/// A workload spec sent as JSON (the CLI's form) or YAML (as a user wrote it).
pub async fn read_spec(headers: &HeaderMap, body: Body) -> Result<WorkloadSpec, ApiError> {
    let format = format_of(headers, true)?;
    let bytes = read_limited(body, MAX_SPEC_BYTES).await?;
    match format {
        Format::Json => flotilla_api::parse_json(&bytes).map_err(ApiError::InvalidSpec),
        Format::Yaml => {
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                ApiError::InvalidSpec(flotilla_api::SpecError {
                    field: None,
                    line: None,
                    column: None,
                    reason: "is not UTF-8 text".into(),
                })
            })?;
            flotilla_api::parse_yaml(text).map_err(ApiError::InvalidSpec)
        }
    }
}

/// A small JSON body, decoded with the failing field's path in the error.
pub async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    read_json_within(headers, body, MAX_SMALL_BODY).await
}

/// What an agent says of all its allocations at once (see `MAX_NODE_BODY`).
pub async fn read_node_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    read_json_within(headers, body, MAX_NODE_BODY).await
}

async fn read_json_within<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    format_of(headers, false)?;
    let bytes = read_limited(body, limit).await?;
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::BadRequest(format!("field `{}`: {}", e.path(), e.inner())))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(chunks: Vec<Result<&'static str, std::io::Error>>) -> Body {
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_too_large_and_one_cut_short_is_not() {
        let whole = read_limited(body_of(vec![Ok("{\"a\":"), Ok("1}")]), 64).await.expect("read");
        assert_eq!(&whole[..], b"{\"a\":1}");

        let large = read_limited(body_of(vec![Ok("0123456789"), Ok("0123456789")]), 16).await;
        assert!(matches!(large, Err(ApiError::PayloadTooLarge(16))), "{large:?}");

        let cut =
            read_limited(body_of(vec![Ok("{\"a\":"), Err(std::io::Error::other("stream reset"))]), 64).await;
        match cut {
            Err(ApiError::BadRequest(message)) => {
                assert!(
                    message.contains("did not arrive whole") && message.contains("stream reset"),
                    "{message}"
                )
            }
            other => panic!("a body cut short is a bad request, not {other:?}"),
        }
    }
}
