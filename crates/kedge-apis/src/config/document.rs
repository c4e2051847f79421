//! Reading and writing configuration documents: YAML to a JSON value, the
//! value laid over the defaults, then the typed structs, with the path of
//! any failing field.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::MAX_CONFIG_BYTES;
use super::error::ConfigError;

/// The `apiVersion` and `kind` a configuration file type accepts.
pub(crate) struct TypeMeta {
    /// The value of `kind`.
    pub(crate) kind: &'static str,
    /// The `apiVersion` written out; accepted on input.
    pub(crate) api_version: &'static str,
    /// Further `apiVersion`s accepted on input, read as `api_version`.
    pub(crate) also_accepted: &'static [&'static str],
}

impl TypeMeta {
    fn accepts(&self, version: &str) -> bool {
        version == self.api_version || self.also_accepted.contains(&version)
    }

    /// Checks an `apiVersion` and `kind` already in a typed value.
    pub(crate) fn check(&self, api_version: &str, kind: &str) -> Result<(), ConfigError> {
        if !self.accepts(api_version) {
            return Err(self.unsupported(&Value::String(api_version.to_owned())));
        }
        if kind != self.kind {
            return Err(ConfigError::WrongKind {
                found: Value::String(kind.to_owned()).to_string(),
                expected: self.kind,
            });
        }
        Ok(())
    }

    fn unsupported(&self, found: &Value) -> ConfigError {
        let expected = std::iter::once(&self.api_version)
            .chain(self.also_accepted)
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(" or ");
        ConfigError::UnsupportedApiVersion {
            found: found.to_string(),
            expected,
        }
    }

    /// Checks the `apiVersion` and `kind` of a parsed file, when present,
    /// and rewrites an accepted older `apiVersion` to the current one.
    fn check_document(&self, document: &mut Map<String, Value>) -> Result<(), ConfigError> {
        if let Some(version) = document.get_mut("apiVersion") {
            match version.as_str() {
                Some(v) if self.accepts(v) => {
                    *version = Value::String(self.api_version.to_owned());
                }
                _ => return Err(self.unsupported(version)),
            }
        }
        if let Some(kind) = document.get("kind")
            && kind.as_str() != Some(self.kind)
        {
            return Err(ConfigError::WrongKind {
                found: kind.to_string(),
                expected: self.kind,
            });
        }
        Ok(())
    }
}

/// Reads a configuration file, refusing files over [`MAX_CONFIG_BYTES`].
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            limit: MAX_CONFIG_BYTES,
        });
    }
    Ok(text)
}

/// Parser options: one document, no source snippets in errors (a file may
/// hold a token), and budgets far below what a bomb needs but far above any
/// real configuration file.
fn yaml_options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1;
    budget.max_events = 200_000;
    budget.max_nodes = 100_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = 64;
    budget.max_total_scalar_bytes = MAX_CONFIG_BYTES as usize;
    budget.max_merge_keys = 1_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 100_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.with_snippet = false;
    options
}

/// Parses YAML text into the mapping at its top level. An empty document
/// is an empty mapping.
pub(crate) fn parse_document(text: &str) -> Result<Map<String, Value>, ConfigError> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            limit: MAX_CONFIG_BYTES,
        });
    }
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let value: Value = serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
        ConfigError::Yaml {
            message: e.to_string(),
        }
    })?;
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ConfigError::NotAMapping {
            found: describe(&other),
        }),
    }
}

/// Lays `file` over `base` the way Go's `json.Unmarshal` fills a struct that
/// already holds defaults: mappings merge key by key (so struct fields and
/// map entries the file does not name keep their defaults), everything else
/// is replaced. A `null` in the file keeps the default, except that it
/// empties a sequence. Where the defaults hold a mapping (a struct or a
/// map), the file must hold one too: anything else is an error at `path`.
pub(crate) fn overlay(base: &mut Value, file: Value, path: &str) -> Result<(), ConfigError> {
    match (base, file) {
        (Value::Object(base), Value::Object(file)) => {
            for (key, value) in file {
                match base.get_mut(&key) {
                    Some(slot) => {
                        let child = if path.is_empty() {
                            key
                        } else {
                            format!("{path}.{key}")
                        };
                        overlay(slot, value, &child)?;
                    }
                    None => {
                        base.insert(key, value);
                    }
                }
            }
            Ok(())
        }
        (Value::Object(_), Value::Null) => Ok(()),
        (Value::Object(_), other) => Err(ConfigError::Field {
            path: path.to_owned(),
            message: format!("invalid type: {}, expected a mapping", describe(&other)),
        }),
        (Value::Array(base), Value::Null) => {
            base.clear();
            Ok(())
        }
        (_, Value::Null) => Ok(()),
        (base, file) => {
            *base = file;
            Ok(())
        }
    }
}

/// A value's kind, for messages.
fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Converts a JSON value into `T`, naming the path of a failing field.
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Field {
            path: if path == "." {
                "(top level)".to_owned()
            } else {
                path
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// Converts `T` into a JSON value.
pub(crate) fn to_value<T: Serialize>(value: &T) -> Result<Value, ConfigError> {
    serde_json::to_value(value).map_err(|e| ConfigError::Serialize {
        message: e.to_string(),
    })
}

/// Writes `T` as a YAML document.
pub(crate) fn to_yaml<T: Serialize>(value: &T) -> Result<String, ConfigError> {
    serde_saphyr::to_string(value).map_err(|e| ConfigError::Serialize {
        message: e.to_string(),
    })
}

/// Parses `text` and lays it over `defaults`, giving the typed
/// configuration (not yet validated).
pub(crate) fn layered<T: Serialize + DeserializeOwned>(
    defaults: &T,
    text: &str,
    meta: &TypeMeta,
) -> Result<T, ConfigError> {
    let mut document = parse_document(text)?;
    meta.check_document(&mut document)?;
    let mut merged = to_value(defaults)?;
    overlay(&mut merged, Value::Object(document), "")?;
    from_value(merged)
}

/// A minimal configuration document, as `cloudcore --minconfig` and
/// `edgecore --minconfig` print it: only the fields a beginner is expected
/// to look at. Loading it gives [`MinConfig::config`], since every field
/// it leaves out takes its default.
#[derive(Debug, Clone, PartialEq)]
pub struct MinConfig<T> {
    config: T,
    keep: &'static [&'static str],
}

impl<T: Serialize> MinConfig<T> {
    pub(crate) fn new(config: T, keep: &'static [&'static str]) -> Self {
        Self { config, keep }
    }

    /// The full configuration this minimal document stands for.
    pub fn config(&self) -> &T {
        &self.config
    }

    /// Consumes the document, returning the full configuration.
    pub fn into_config(self) -> T {
        self.config
    }

    /// Writes the minimal document as YAML.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        let full = to_value(&self.config)?;
        let mut tree = KeepTree::default();
        for path in self.keep {
            tree.insert(path.split('.'));
        }
        to_yaml(&tree.prune(&full))
    }
}

/// The dotted paths a [`MinConfig`] keeps, as a tree. A node without
/// children keeps its whole subtree.
#[derive(Default)]
struct KeepTree(BTreeMap<&'static str, KeepTree>);

impl KeepTree {
    fn insert(&mut self, mut segments: impl Iterator<Item = &'static str>) {
        if let Some(first) = segments.next() {
            self.0.entry(first).or_default().insert(segments);
        }
    }

    /// The parts of `value` on a kept path, in `value`'s order.
    fn prune(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) if !self.0.is_empty() => Value::Object(
                map.iter()
                    .filter_map(|(key, child)| {
                        self.0
                            .get(key.as_str())
                            .map(|sub| (key.clone(), sub.prune(child)))
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overlay_merges_like_go_json() {
        let mut base = json!({
            "a": {"x": 1, "y": 2},
            "m": {"k1": "v1"},
            "list": [1, 2],
            "s": "keep",
        });
        overlay(
            &mut base,
            json!({
                "a": {"y": 3},
                "m": {"k2": "v2"},
                "list": [9],
                "s": null,
                "new": true,
            }),
            "",
        )
        .unwrap();
        assert_eq!(
            base,
            json!({
                "a": {"x": 1, "y": 3},
                "m": {"k1": "v1", "k2": "v2"},
                "list": [9],
                "s": "keep",
                "new": true,
            })
        );
        overlay(&mut base, json!({"list": null, "a": null}), "").unwrap();
        assert_eq!(base["list"], json!([]));
        assert_eq!(base["a"], json!({"x": 1, "y": 3}));
        let err = overlay(&mut base, json!({"a": {"x": [1]}, "m": 5}), "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m: invalid type: a number, expected a mapping"
        );
    }

    #[test]
    fn parse_document_shapes() {
        assert!(parse_document("").unwrap().is_empty());
        assert!(parse_document("# only a comment\n").unwrap().is_empty());
        assert!(parse_document("~").unwrap().is_empty());
        assert!(matches!(
            parse_document("- a\n- b\n"),
            Err(ConfigError::NotAMapping {
                found: "a sequence"
            })
        ));
        assert!(matches!(
            parse_document("just text"),
            Err(ConfigError::NotAMapping { found: "a string" })
        ));
        assert!(matches!(
            parse_document("a: [1, 2\n"),
            Err(ConfigError::Yaml { .. })
        ));
        assert!(matches!(
            parse_document("a: 1\n---\nb: 2\n"),
            Err(ConfigError::Yaml { .. })
        ));
        assert!(matches!(
            parse_document("a: 1\na: 2\n"),
            Err(ConfigError::Yaml { .. })
        ));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert!(matches!(
            parse_document(&bomb),
            Err(ConfigError::Yaml { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse_document(&deep),
            Err(ConfigError::Yaml { .. })
        ));
        let deep = (0..500).fold(String::new(), |mut s, i| {
            s.push_str(&" ".repeat(i));
            s.push_str("k:\n");
            s
        });
        assert!(parse_document(&deep).is_err());
    }

    #[test]
    fn keep_tree_prunes_in_document_order() {
        let value = json!({"b": {"x": 1, "y": 2}, "a": 1, "c": {"z": 3}});
        let mut tree = KeepTree::default();
        tree.insert("c".split('.'));
        tree.insert("b.y".split('.'));
        let pruned = tree.prune(&value);
        assert_eq!(pruned, json!({"b": {"y": 2}, "c": {"z": 3}}));
        let keys: Vec<&String> = pruned.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["b", "c"]);
    }
}
