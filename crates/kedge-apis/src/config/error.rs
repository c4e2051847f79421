//! The error type for loading, parsing and validating configuration files.

use std::fmt;
use std::path::PathBuf;

/// One semantic problem found by validation, tied to the field that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the offending field in the YAML document, for example
    /// `modules.cloudHub.nodeLimit`.
    pub path: String,
    /// What is wrong with the value.
    pub message: String,
}

impl FieldError {
    /// Creates an error for the field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything that can go wrong while reading, parsing, validating or
/// writing a configuration file. No input, however malformed, panics: it
/// ends in one of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be opened or read (it does not exist,
    /// is not readable, is a directory, or is not UTF-8).
    #[error("cannot read configuration file {}", path.display())]
    Read {
        /// The path that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input is larger than [`MAX_CONFIG_BYTES`](super::MAX_CONFIG_BYTES).
    #[error("configuration is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The input is not well-formed YAML, holds more than one document, or
    /// exceeds the parser's budget (alias bombs, very deep nesting, ...).
    #[error("invalid YAML: {message}")]
    Yaml {
        /// The parser's description of the problem, with its location.
        message: String,
    },
    /// The document's top level is not a mapping.
    #[error("the configuration must be a YAML mapping, found {found}")]
    NotAMapping {
        /// What was found instead (`a sequence`, `a string`, ...).
        found: &'static str,
    },
    /// The `apiVersion` field names a version this crate does not read.
    #[error("apiVersion: unsupported value {found}; expected {expected}")]
    UnsupportedApiVersion {
        /// The value found, rendered as JSON (strings are quoted).
        found: String,
        /// The accepted values, quoted and joined with `or`.
        expected: String,
    },
    /// The `kind` field is not the one of this file type.
    #[error("kind: expected {expected:?}, found {found}")]
    WrongKind {
        /// The value found, rendered as JSON (strings are quoted).
        found: String,
        /// The expected kind, `CloudCore` or `EdgeCore`.
        expected: &'static str,
    },
    /// A field is unknown, or its value has the wrong type or an invalid
    /// spelling (for example an unknown enum value or a bad duration).
    #[error("{path}: {message}")]
    Field {
        /// Dotted path of the field, for example `modules.cloudHub.nodeLimt`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The document parsed but failed semantic validation; every problem
    /// found is listed.
    #[error("invalid configuration: {}", join(errors))]
    Invalid {
        /// The problems, in document order.
        errors: Vec<FieldError>,
    },
    /// The configuration could not be written as YAML.
    #[error("cannot write configuration as YAML: {message}")]
    Serialize {
        /// The serialiser's description of the problem.
        message: String,
    },
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
