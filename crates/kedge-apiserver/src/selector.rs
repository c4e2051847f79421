//! Label and field selectors, as `labelSelector` and `fieldSelector` query
//! parameters spell them.

use serde_json::{Map, Value};

use crate::status::StatusError;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key=value`, `key==value`, `key in (a,b)`.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)`.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

fn bad(text: &str, why: impl std::fmt::Display) -> StatusError {
    StatusError::bad_request(format!(
        "unable to parse requirement: {why} (in selector {text:?})"
    ))
}

/// Whether `key` is a valid label key: an optional DNS subdomain prefix and
/// `/`, then a name of at most 63 alphanumerics, `-`, `_` and `.`, starting
/// and ending alphanumeric.
pub fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix
        && (prefix.is_empty()
            || prefix.len() > 253
            || !prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            }))
    {
        return false;
    }
    !name.is_empty() && valid_label_value(name)
}

/// Whether `value` is a valid label value (may be empty).
pub fn valid_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric()
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, StatusError> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(bad(text, "unexpected ')'"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(bad(text, "unclosed '('"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_set(text: &str, rest: &str) -> Result<Vec<String>, StatusError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(text, "expected a parenthesised set of values"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    for value in &values {
        if !valid_label_value(value) {
            return Err(bad(text, format!("invalid label value: {value:?}")));
        }
    }
    Ok(values)
}

fn parse_requirement(text: &str, part: &str) -> Result<Requirement, StatusError> {
    let part = part.trim();
    if part.is_empty() {
        return Err(bad(text, "empty requirement"));
    }
    let key_ok = |key: &str| -> Result<String, StatusError> {
        let key = key.trim();
        if valid_label_key(key) {
            Ok(key.to_owned())
        } else {
            Err(bad(text, format!("invalid label key {key:?}")))
        }
    };
    let value_ok = |value: &str| -> Result<String, StatusError> {
        let value = value.trim();
        if valid_label_value(value) {
            Ok(value.to_owned())
        } else {
            Err(bad(text, format!("invalid label value: {value:?}")))
        }
    };
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key_ok(key)?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(key_ok(key)?, vec![value_ok(value)?]));
    }
    if let Some((key, value)) = part.split_once("==") {
        return Ok(Requirement::In(key_ok(key)?, vec![value_ok(value)?]));
    }
    if let Some((key, value)) = part.split_once('=') {
        return Ok(Requirement::In(key_ok(key)?, vec![value_ok(value)?]));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default();
    match words.next().map(str::trim_start) {
        None => Ok(Requirement::Exists(key_ok(key)?)),
        Some(rest) => {
            if let Some(set) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(key_ok(key)?, parse_set(text, set)?))
            } else if let Some(set) = rest.strip_prefix("in") {
                Ok(Requirement::In(key_ok(key)?, parse_set(text, set)?))
            } else {
                Err(bad(text, format!("unknown operator in {part:?}")))
            }
        }
    }
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(text: &str) -> Result<Self, StatusError> {
        let requirements = split_top_level(text)?
            .into_iter()
            .map(|part| parse_requirement(text, part))
            .collect::<Result<_, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether `labels` (a JSON map of strings) satisfies the selector.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.requirements.iter().all(|requirement| {
            let value = |key: &str| labels.get(key).and_then(Value::as_str);
            match requirement {
                Requirement::In(key, values) => {
                    value(key).is_some_and(|v| values.iter().any(|x| x == v))
                }
                Requirement::NotIn(key, values) => {
                    !value(key).is_some_and(|v| values.iter().any(|x| x == v))
                }
                Requirement::Exists(key) => labels.contains_key(key),
                Requirement::DoesNotExist(key) => !labels.contains_key(key),
            }
        })
    }
}

/// The selector string of a `metav1.LabelSelector` object
/// (`matchLabels` and `matchExpressions`), requirements sorted by key.
pub fn label_selector_string(selector: &Value) -> Result<String, StatusError> {
    let mut parts: Vec<(String, String)> = Vec::new();
    if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
        for (key, value) in labels {
            let value = value.as_str().unwrap_or_default();
            parts.push((key.clone(), format!("{key}={value}")));
        }
    }
    if let Some(expressions) = selector.get("matchExpressions").and_then(Value::as_array) {
        for expression in expressions {
            let key = expression
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let mut values: Vec<&str> = expression
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            values.sort_unstable();
            let text = match expression.get("operator").and_then(Value::as_str) {
                Some("In") => format!("{key} in ({})", values.join(",")),
                Some("NotIn") => format!("{key} notin ({})", values.join(",")),
                Some("Exists") => key.to_owned(),
                Some("DoesNotExist") => format!("!{key}"),
                other => {
                    return Err(StatusError::bad_request(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            parts.push((key.to_owned(), text));
        }
    }
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(parts
        .into_iter()
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join(","))
}

/// One field requirement: `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed field selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Splits on `sep` not preceded by a backslash, then unescapes `\,`, `\=`
/// and `\\`.
fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                current.push('\\');
                current.push(next);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The fields every kind supports.
const COMMON_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

/// The extra fields a built-in kind supports.
fn extra_fields(group: &str, kind: &str) -> &'static [&'static str] {
    match (group, kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Event") | ("events.k8s.io", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Secret") => &["type"],
        ("", "Node") => &["spec.unschedulable"],
        ("", "Namespace") => &["status.phase"],
        ("", "ReplicationController") | ("apps", "ReplicaSet") => &["status.replicas"],
        ("batch", "Job") => &["status.successful"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `f=v,g!=w` (with `\,`, `\=` and `\\` escapes).
    pub fn parse(text: &str) -> Result<Self, StatusError> {
        let mut requirements = Vec::new();
        for part in split_escaped(text, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(StatusError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            requirements.push(FieldRequirement {
                field: unescape(field.trim()),
                value: unescape(value.trim()),
                equal,
            });
        }
        Ok(Self { requirements })
    }

    /// 400 if a field is not supported for the kind, as kube-apiserver
    /// answers.
    pub fn check_supported(
        &self,
        group: &str,
        kind: &str,
        custom: bool,
    ) -> Result<(), StatusError> {
        for requirement in &self.requirements {
            let field = requirement.field.as_str();
            let known = COMMON_FIELDS.contains(&field)
                || (!custom && extra_fields(group, kind).contains(&field));
            if !known {
                return Err(StatusError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
        }
        Ok(())
    }

    /// The `field=value` requirements (inequalities left out), as the node
    /// authorizer reads them.
    pub fn equalities(&self) -> Vec<(String, String)> {
        self.requirements
            .iter()
            .filter(|r| r.equal)
            .map(|r| (r.field.clone(), r.value.clone()))
            .collect()
    }

    /// Whether `object` satisfies every requirement.
    pub fn matches(&self, _group: &str, kind: &str, object: &Value) -> bool {
        self.requirements.iter().all(|requirement| {
            let actual = field_value(kind, object, &requirement.field);
            (actual == requirement.value) == requirement.equal
        })
    }
}

/// The value of a selectable field as a string, as kube's field sets give
/// it: missing strings are empty, booleans are `true`/`false`.
fn field_value(kind: &str, object: &Value, field: &str) -> String {
    if kind == "Event" && field == "source" {
        return object
            .pointer("/source/component")
            .or_else(|| object.get("reportingController"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
    }
    let pointer = format!("/{}", field.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null)
            if field == "spec.hostNetwork" || field == "spec.unschedulable" =>
        {
            "false".to_owned()
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn label_selectors_parse_and_match() {
        let s = LabelSelector::parse("app=web, tier in (front, back),env!=prod,release,!canary")
            .unwrap();
        assert!(s.matches(&labels(
            json!({"app": "web", "tier": "front", "release": "1"})
        )));
        assert!(!s.matches(&labels(
            json!({"app": "web", "tier": "front", "release": "1", "canary": ""})
        )));
        assert!(!s.matches(&labels(json!({"app": "web", "tier": "db", "release": "1"}))));
        assert!(!s.matches(&labels(
            json!({"app": "web", "tier": "front", "env": "prod", "release": "1"})
        )));
        let s = LabelSelector::parse("x notin (a,b)").unwrap();
        assert!(s.matches(&labels(json!({}))));
        assert!(!s.matches(&labels(json!({"x": "a"}))));
        let s = LabelSelector::parse("example.com/app==db").unwrap();
        assert!(s.matches(&labels(json!({"example.com/app": "db"}))));
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for text in [
            "a=b=c",
            "-a=b",
            "a in x",
            "a in (b",
            "a foo (b)",
            "a=,",
            "a=",
        ] {
            let result = LabelSelector::parse(text);
            if text == "a=" {
                assert!(result.is_ok(), "empty value is valid");
                continue;
            }
            let error = result.expect_err(text);
            assert_eq!(error.code(), 400, "{text}");
        }
    }

    #[test]
    fn selector_objects_become_strings() {
        let s = label_selector_string(&json!({
            "matchLabels": {"tier": "web", "app": "x"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]},
                                 {"key": "zz", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert_eq!(s, "app=x,env in (dev,prod),tier=web,!zz");
        assert!(
            label_selector_string(&json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}))
                .is_err()
        );
    }

    #[test]
    fn field_selectors() {
        let s = FieldSelector::parse("spec.nodeName=edge-1,status.phase!=Failed").unwrap();
        s.check_supported("", "Pod", false).unwrap();
        assert!(s.matches(
            "",
            "Pod",
            &json!({"spec": {"nodeName": "edge-1"}, "status": {"phase": "Running"}})
        ));
        assert!(!s.matches("", "Pod", &json!({"spec": {"nodeName": "edge-2"}})));
        assert_eq!(
            s.check_supported("", "ConfigMap", false)
                .unwrap_err()
                .code(),
            400
        );
        let s = FieldSelector::parse("metadata.name=a\\,b").unwrap();
        assert!(s.matches("", "ConfigMap", &json!({"metadata": {"name": "a,b"}})));
        s.check_supported("example.com", "Widget", true).unwrap();
        let s = FieldSelector::parse("spec.hostNetwork=false").unwrap();
        assert!(s.matches("", "Pod", &json!({"spec": {}})));
        let s = FieldSelector::parse("involvedObject.name=web,source=kubelet").unwrap();
        s.check_supported("", "Event", false).unwrap();
        assert!(s.matches(
            "",
            "Event",
            &json!({"involvedObject": {"name": "web"}, "source": {"component": "kubelet"}})
        ));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
