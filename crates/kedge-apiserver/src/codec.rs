//! Request bodies in and response bodies out: content types, the body size
//! limit, and the representation a client asks for in `Accept`.

use serde_json::Value;

use crate::status::{Reason, StatusError};

/// `application/json`.
pub const JSON: &str = "application/json";
/// `application/yaml`.
pub const YAML: &str = "application/yaml";
/// Kubernetes' protobuf encoding.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
/// The content type of a `Table` response.
pub const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// The media type of a `Content-Type` or `Accept` entry, without
/// parameters, lower-cased.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a request body of `content_type` into a JSON value. Bodies over
/// `limit` bytes are refused before decoding.
pub fn decode_body(
    content_type: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<Value, StatusError> {
    if body.len() > limit {
        return Err(too_large(limit));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(StatusError::bad_request("the request body is empty"));
    }
    let media = content_type
        .map(media_type)
        .unwrap_or_else(|| JSON.to_owned());
    match media.as_str() {
        JSON | "" | "*/*" => decode_json(body),
        YAML | "application/x-yaml" | "text/yaml" => decode_yaml(body),
        PROTOBUF => crate::protobuf::decode(body),
        other => Err(StatusError::new(
            Reason::UnsupportedMediaType,
            format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf"
            ),
        )),
    }
}

/// The 413 answer for a body over `limit` bytes.
pub fn too_large(limit: usize) -> StatusError {
    StatusError::new(
        Reason::RequestEntityTooLarge,
        format!("Request entity too large: limit is {limit}"),
    )
}

/// Decodes JSON.
pub fn decode_json(body: &[u8]) -> Result<Value, StatusError> {
    serde_json::from_slice::<Value>(body).map_err(|error| {
        StatusError::bad_request(format!("error decoding the request body as JSON: {error}"))
    })
}

/// Decodes YAML (one document) into JSON.
pub fn decode_yaml(body: &[u8]) -> Result<Value, StatusError> {
    let text = std::str::from_utf8(body).map_err(|_| {
        StatusError::bad_request("error decoding the request body as YAML: not UTF-8")
    })?;
    serde_saphyr::from_str::<Value>(text).map_err(|error| {
        StatusError::bad_request(format!("error decoding the request body as YAML: {error}"))
    })
}

/// The representation a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// The object or list as JSON.
    Json,
    /// The object or list as YAML.
    Yaml,
    /// A meta.k8s.io/v1 `Table` (kubectl get).
    Table,
}

/// Picks the representation from an `Accept` header: the first entry this
/// server can produce wins. A client that accepts only protobuf gets 406.
pub fn negotiate(accept: Option<&str>) -> Result<Representation, StatusError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Representation::Json);
    };
    for entry in accept.split(',') {
        let media = media_type(entry);
        let params: Vec<(String, String)> = entry
            .split(';')
            .skip(1)
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match media.as_str() {
            JSON | "application/*" | "*/*" => match (param("as"), param("g")) {
                (None, _) => return Ok(Representation::Json),
                (Some("Table"), Some("meta.k8s.io"))
                    if matches!(param("v"), Some("v1" | "v1beta1")) =>
                {
                    return Ok(Representation::Table);
                }
                _ => continue,
            },
            YAML => return Ok(Representation::Yaml),
            _ => continue,
        }
    }
    Err(StatusError::new(
        Reason::NotAcceptable,
        "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_accept_headers_negotiate() {
        let table = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(table)).expect("ok"), Representation::Table);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf,application/json")).expect("ok"),
            Representation::Json
        );
        assert_eq!(
            negotiate(Some("application/json, */*")).expect("ok"),
            Representation::Json
        );
        assert_eq!(negotiate(None).expect("ok"), Representation::Json);
        assert_eq!(
            negotiate(Some("application/yaml")).expect("ok"),
            Representation::Yaml
        );
        let partial =
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(Some(partial)).expect("ok"), Representation::Json);
        assert_eq!(negotiate(Some(PROTOBUF)).map_err(|e| e.code()), Err(406));
    }

    #[test]
    fn bodies_decode_or_fail_clearly() {
        let value =
            decode_body(Some("application/json; charset=utf-8"), br#"{"a":1}"#, 100).expect("json");
        assert_eq!(value["a"], 1);
        let value = decode_body(Some(YAML), b"a: 1\nb: [x]\n", 100).expect("yaml");
        assert_eq!(value["b"][0], "x");
        assert_eq!(decode_body(None, b"{", 100).map_err(|e| e.code()), Err(400));
        assert_eq!(
            decode_body(None, b"  ", 100).map_err(|e| e.code()),
            Err(400)
        );
        assert_eq!(
            decode_body(Some("text/plain"), b"{}", 100).map_err(|e| e.code()),
            Err(415)
        );
        assert_eq!(
            decode_body(None, &[b' '; 101], 100).map_err(|e| e.code()),
            Err(413)
        );
    }
}
