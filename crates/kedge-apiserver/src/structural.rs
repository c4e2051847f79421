//! Custom resources against their version's structural schema
//! (`openAPIV3Schema`): defaults are filled in, fields the schema does not
//! declare are pruned (unless `x-kubernetes-preserve-unknown-fields`), and
//! the object is validated (types, required, bounds, lengths, enums,
//! patterns, item counts) with kube's field paths and messages.

use serde_json::{Map, Value, json};

use crate::status::{CauseType, FieldError};

/// Fields of the root kept whatever the schema says.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

/// Fills defaults and prunes undeclared fields of `object` in place.
pub fn default_and_prune(schema: &Value, object: &mut Value) {
    walk(schema, object, true);
}

fn walk(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(properties) = properties {
                for (key, property) in properties {
                    if !map.contains_key(key)
                        && let Some(default) = property.get("default")
                    {
                        map.insert(key.clone(), default.clone());
                    }
                }
            }
            let additional = schema.get("additionalProperties");
            let keep_all =
                preserves_unknown(schema) || additional.and_then(Value::as_bool) == Some(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if root && ROOT_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                let child_schema = properties
                    .and_then(|p| p.get(&key))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match child_schema {
                    Some(child_schema) => {
                        if let Some(child) = map.get_mut(&key) {
                            walk(child_schema, child, false);
                        }
                    }
                    None if keep_all => {}
                    None => {
                        map.remove(&key);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    walk(item_schema, item, false);
                }
            }
        }
        _ => {}
    }
}

/// The validation errors of `object`.
pub fn validate(schema: &Value, object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(map) = object.as_object() {
        // The root: metadata is validated elsewhere; apiVersion and kind
        // are the request's.
        let mut rest = Map::new();
        for (key, value) in map {
            if !ROOT_FIELDS.contains(&key.as_str()) {
                rest.insert(key.clone(), value.clone());
            }
        }
        let mut root_schema = schema.clone();
        if let Some(required) = root_schema
            .get_mut("required")
            .and_then(Value::as_array_mut)
        {
            required.retain(|r| !ROOT_FIELDS.contains(&r.as_str().unwrap_or_default()));
        }
        if let Some(properties) = root_schema
            .get_mut("properties")
            .and_then(Value::as_object_mut)
        {
            for field in ROOT_FIELDS {
                properties.remove(field);
            }
        }
        check(&root_schema, &Value::Object(rest), "", &mut errors);
    }
    errors
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid(path: &str, value: &Value, detail: String) -> FieldError {
    FieldError::invalid(path, value.clone(), detail)
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let shown = if path.is_empty() { "<root>" } else { path };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true)
            && schema.get("type").is_some()
        {
            errors.push(FieldError::new(
                CauseType::TypeInvalid,
                shown,
                Some(Value::Null),
                format!(
                    "{shown} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let fits = actual == expected
            || (expected == "number" && actual == "integer")
            || (int_or_string && matches!(actual, "integer" | "string"));
        if !fits {
            errors.push(FieldError::new(
                CauseType::TypeInvalid,
                shown,
                Some(value.clone()),
                format!("{shown} in body must be of type {expected}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let supported: Vec<String> = options.iter().map(Value::to_string).collect();
        errors.push(FieldError::new(
            CauseType::NotSupported,
            shown,
            Some(value.clone()),
            format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
        ));
    }
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            let exclusive_min =
                schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
            let exclusive_max =
                schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                && (x < min || (exclusive_min && x == min))
            {
                let relation = if exclusive_min {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                errors.push(invalid(
                    shown,
                    value,
                    format!("{shown} in body should be {relation} {}", schema["minimum"]),
                ));
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                && (x > max || (exclusive_max && x == max))
            {
                let relation = if exclusive_max {
                    "less than"
                } else {
                    "less than or equal to"
                };
                errors.push(invalid(
                    shown,
                    value,
                    format!("{shown} in body should be {relation} {}", schema["maximum"]),
                ));
            }
        }
        Value::String(text) => {
            let length = text.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && length < min
            {
                errors.push(invalid(
                    shown,
                    value,
                    format!("{shown} in body should be at least {min} chars long"),
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && length > max
            {
                errors.push(FieldError::new(
                    CauseType::TooLong,
                    shown,
                    Some(value.clone()),
                    format!("{shown} in body may not be longer than {max}"),
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Ok(regex) = regex::Regex::new(pattern)
                && !regex.is_match(text)
            {
                errors.push(invalid(
                    shown,
                    value,
                    format!("{shown} in body should match '{pattern}'"),
                ));
            }
        }
        Value::Array(items) => {
            let count = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && count < min
            {
                errors.push(invalid(
                    shown,
                    value,
                    format!("{shown} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && count > max
            {
                errors.push(FieldError::new(
                    CauseType::TooMany,
                    shown,
                    Some(json!(count)),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for field in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(field) {
                        errors.push(FieldError::required(join(path, field), ""));
                    }
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                let child_schema = properties.and_then(|p| p.get(key)).or(additional);
                if let Some(child_schema) = child_schema {
                    check(child_schema, child, &join(path, key), errors);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn widget_schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["color"], "properties": {
                "size": {"type": "integer", "minimum": 1, "default": 1},
                "color": {"type": "string", "enum": ["red", "blue"]},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "pattern": "^[a-z]+$"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}})
    }

    #[test]
    fn defaults_and_pruning() {
        let mut widget = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"color": "red", "unknown": 1, "extra": {"anything": {"goes": true}}}, "junk": 2});
        default_and_prune(&widget_schema(), &mut widget);
        assert_eq!(widget["spec"]["size"], 1);
        assert!(widget["spec"].get("unknown").is_none());
        assert!(widget.get("junk").is_none());
        assert_eq!(widget["spec"]["extra"]["anything"]["goes"], true);
        assert_eq!(widget["metadata"]["name"], "w");
    }

    #[test]
    fn validation_messages() {
        let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 0, "color": "green", "tags": ["ok", "NO", "x"]}, "status": {"ready": "yes"}});
        let errors: Vec<String> = validate(&widget_schema(), &widget)
            .iter()
            .map(FieldError::message)
            .collect();
        let all = errors.join("\n");
        assert!(
            all.contains("spec.size in body should be greater than or equal to 1"),
            "{all}"
        );
        assert!(all.contains("Unsupported value: \"green\""), "{all}");
        assert!(
            all.contains("spec.tags[1] in body should match '^[a-z]+$'"),
            "{all}"
        );
        assert!(all.contains("must have at most 2 items"), "{all}");
        assert!(
            all.contains("status.ready in body must be of type boolean"),
            "{all}"
        );
        let missing = json!({"spec": {}});
        let errors: Vec<String> = validate(&widget_schema(), &missing)
            .iter()
            .map(FieldError::message)
            .collect();
        assert!(
            errors.join("\n").contains("spec.color: Required value"),
            "{errors:?}"
        );
    }
}
