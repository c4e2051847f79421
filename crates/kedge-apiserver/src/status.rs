//! The `metav1.Status` error model.
//!
//! Every request that fails answers with a JSON `Status` object carrying the
//! HTTP code, a machine-readable reason and, for validation errors, the
//! causes per field, as kube-apiserver does. Handlers return
//! [`StatusError`]; the HTTP layer turns it into the response.

use serde_json::{Value, json};

/// The machine-readable `reason` of a failure (`metav1.StatusReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 400: a malformed request (bad selector, strict decoding, bad patch).
    BadRequest,
    /// 401: no or bad credentials.
    Unauthorized,
    /// 403: the identity may not do this.
    Forbidden,
    /// 404: the object or resource does not exist.
    NotFound,
    /// 405: the verb is not supported on this resource.
    MethodNotAllowed,
    /// 406: no acceptable representation.
    NotAcceptable,
    /// 409: create of an object that exists.
    AlreadyExists,
    /// 409: a resourceVersion or uid precondition failed.
    Conflict,
    /// 410: the resourceVersion or continue token is too old.
    Expired,
    /// 413: the request body is too large.
    RequestEntityTooLarge,
    /// 415: the body's content type is not supported here.
    UnsupportedMediaType,
    /// 422: the object is invalid; see the causes.
    Invalid,
    /// 429: too many requests.
    TooManyRequests,
    /// 500: a server fault.
    InternalError,
    /// 503: the server cannot serve the request now.
    ServiceUnavailable,
    /// 504: the request timed out.
    Timeout,
}

impl Reason {
    /// The HTTP status code for this reason.
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::NotAcceptable => 406,
            Self::AlreadyExists | Self::Conflict => 409,
            Self::Expired => 410,
            Self::RequestEntityTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Invalid => 422,
            Self::TooManyRequests => 429,
            Self::InternalError => 500,
            Self::ServiceUnavailable => 503,
            Self::Timeout => 504,
        }
    }

    /// The reason as it appears in the `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::NotAcceptable => "NotAcceptable",
            Self::AlreadyExists => "AlreadyExists",
            Self::Conflict => "Conflict",
            Self::Expired => "Expired",
            Self::RequestEntityTooLarge => "RequestEntityTooLarge",
            Self::UnsupportedMediaType => "UnsupportedMediaType",
            Self::Invalid => "Invalid",
            Self::TooManyRequests => "TooManyRequests",
            Self::InternalError => "InternalError",
            Self::ServiceUnavailable => "ServiceUnavailable",
            Self::Timeout => "Timeout",
        }
    }
}

/// The kind of problem one field has (`metav1.CauseType`), as
/// `field.ErrorType` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CauseType {
    /// `FieldValueNotFound`.
    NotFound,
    /// `FieldValueRequired`.
    Required,
    /// `FieldValueDuplicate`.
    Duplicate,
    /// `FieldValueInvalid`.
    Invalid,
    /// `FieldValueNotSupported`.
    NotSupported,
    /// `FieldValueForbidden`.
    Forbidden,
    /// `FieldValueTooLong`.
    TooLong,
    /// `FieldValueTooMany`.
    TooMany,
    /// `FieldValueTypeInvalid`.
    TypeInvalid,
    /// `FieldValueUnknown` (unknown field in strict decoding).
    Unknown,
}

impl CauseType {
    /// The cause type as it appears in `details.causes[].reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::TypeInvalid => "FieldValueTypeInvalid",
            Self::Unknown => "FieldValueUnknown",
        }
    }

    /// The phrase kube-apiserver puts before the detail in a cause's
    /// message (`field.ErrorType.String()`).
    pub fn phrase(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::TypeInvalid => "Invalid value",
            Self::Unknown => "Unknown field",
        }
    }
}

/// One field's problem in an invalid object (`field.Error`).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// What is wrong.
    pub cause: CauseType,
    /// The field path, such as `spec.containers[0].image` or
    /// `metadata.labels`.
    pub field: String,
    /// The offending value, when there is one worth quoting.
    pub value: Option<Value>,
    /// The detail, such as `must be no more than 63 characters`.
    pub detail: String,
}

impl FieldError {
    /// A field error of type `cause` at `field`.
    pub fn new(
        cause: CauseType,
        field: impl Into<String>,
        value: Option<Value>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            cause,
            field: field.into(),
            value,
            detail: detail.into(),
        }
    }

    /// `FieldValueRequired` at `field`.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(CauseType::Required, field, None, detail)
    }

    /// `FieldValueInvalid` at `field` for `value`.
    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        Self::new(CauseType::Invalid, field, Some(value), detail)
    }

    /// `FieldValueNotSupported` at `field` for `value`, listing what is.
    pub fn not_supported(field: impl Into<String>, value: Value, supported: &[&str]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        let detail = format!("supported values: {}", quoted.join(", "));
        Self::new(CauseType::NotSupported, field, Some(value), detail)
    }

    /// `FieldValueForbidden` at `field`.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(CauseType::Forbidden, field, None, detail)
    }

    /// `FieldValueDuplicate` at `field` for `value`.
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        Self::new(CauseType::Duplicate, field, Some(value), "")
    }

    /// The message as kube-apiserver words it:
    /// `spec.containers[0].image: Required value`, or
    /// `metadata.name: Invalid value: "A": a lowercase RFC 1123 subdomain ...`.
    pub fn message(&self) -> String {
        let mut message = format!("{}: {}", self.field, self.cause.phrase());
        if let Some(value) = &self.value {
            message.push_str(": ");
            message.push_str(&value.to_string());
        }
        if !self.detail.is_empty() {
            message.push_str(": ");
            message.push_str(&self.detail);
        }
        message
    }
}

/// A failed request, as the `Status` object it is answered with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason:?} ({code}): {message}", reason = self.reason, code = self.reason.code(), message = self.message)]
pub struct StatusError {
    /// The reason, which fixes the HTTP code.
    pub reason: Reason,
    /// A human-readable description.
    pub message: String,
    /// `details`: which object, and the per-field causes.
    pub details: Option<Value>,
}

impl StatusError {
    /// A failure with `reason` and `message` and no details.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Reason::BadRequest, message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Reason::InternalError, message)
    }

    /// 404 NotFound: `configmaps "cm1" not found`, with details naming the
    /// group and resource (`details.kind` is the plural resource name, as in
    /// kube-apiserver).
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        Self::for_object(
            Reason::NotFound,
            group,
            resource,
            name,
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
    }

    /// 409 AlreadyExists: `configmaps "cm1" already exists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        Self::for_object(
            Reason::AlreadyExists,
            group,
            resource,
            name,
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
    }

    /// 409 Conflict: `Operation cannot be fulfilled on configmaps "cm1": <why>`.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        Self::for_object(
            Reason::Conflict,
            group,
            resource,
            name,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, resource)
            ),
        )
    }

    /// 410 Expired: the resourceVersion is too old.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(Reason::Expired, message)
    }

    /// 422 Invalid: `Pod "p1" is invalid: [cause, cause]`, with every
    /// field error as a cause. `kind` is the object's kind (`Pod`).
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let messages: Vec<String> = errors.iter().map(FieldError::message).collect();
        let summary = match messages.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = errors
            .iter()
            .map(|error| {
                json!({
                    "reason": error.cause.as_str(),
                    "message": error.message(),
                    "field": error.field,
                })
            })
            .collect();
        let mut details = json!({"name": name, "group": group, "kind": kind, "causes": causes});
        strip_empty_group(&mut details);
        Self {
            reason: Reason::Invalid,
            message: format!(
                "{} \"{name}\" is invalid: {summary}",
                qualified(group, kind)
            ),
            details: Some(details),
        }
    }

    fn for_object(
        reason: Reason,
        group: &str,
        resource: &str,
        name: &str,
        message: String,
    ) -> Self {
        let mut details = json!({"name": name, "group": group, "kind": resource});
        strip_empty_group(&mut details);
        Self {
            reason,
            message,
            details: Some(details),
        }
    }

    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        self.reason.code()
    }

    /// The `Status` object (`kind: Status, apiVersion: v1`).
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status["code"] = json!(self.code());
        status
    }
}

/// `resource.group`, or `resource` for the core group.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

fn strip_empty_group(details: &mut Value) {
    if let Some(map) = details.as_object_mut()
        && map.get("group").and_then(Value::as_str) == Some("")
    {
        map.remove("group");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_as_kube_apiserver_writes_it() {
        let status = StatusError::not_found("", "configmaps", "cm1").to_status();
        assert_eq!(status["message"], "configmaps \"cm1\" not found");
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(
            status["details"],
            json!({"name": "cm1", "kind": "configmaps"})
        );
        let status = StatusError::not_found("apps", "deployments", "d1").to_status();
        assert_eq!(status["message"], "deployments.apps \"d1\" not found");
        assert_eq!(status["details"]["group"], "apps");
    }

    #[test]
    fn invalid_lists_every_cause() {
        let errors = [
            FieldError::required("spec.containers[0].image", ""),
            FieldError::invalid("metadata.name", json!("A"), "must be lowercase"),
        ];
        let status = StatusError::invalid("", "Pod", "A", &errors).to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["message"],
            "Pod \"A\" is invalid: [spec.containers[0].image: Required value, metadata.name: Invalid value: \"A\": must be lowercase]"
        );
        assert_eq!(
            status["details"]["causes"][1]["reason"],
            "FieldValueInvalid"
        );
        assert_eq!(status["details"]["causes"][1]["field"], "metadata.name");
    }
}
