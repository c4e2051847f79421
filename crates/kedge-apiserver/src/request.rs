//! What a request asks for: the resource path parsed into group, version,
//! namespace, resource, name and subresource; the verb; and the list, watch,
//! write and delete options of its query string.

use std::collections::BTreeMap;

use crate::status::StatusError;

/// A Kubernetes API verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection (or one object) with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// The verb as authorization and discovery spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

/// A request for a resource, parsed from its method, path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequest {
    /// The verb.
    pub verb: Verb,
    /// API group; empty for the core group (`/api`).
    pub group: String,
    /// API version.
    pub version: String,
    /// Namespace from the path, if any.
    pub namespace: Option<String>,
    /// Plural resource name.
    pub resource: String,
    /// Object name, if any.
    pub name: Option<String>,
    /// Subresource, if any.
    pub subresource: Option<String>,
}

/// Parses `path` (without query) of an API request. Returns `None` for
/// paths that are not resource requests (discovery, `/version`, ...).
///
/// `namespaced` tells whether a resource name is a namespaced resource
/// type of the group-version; it decides whether `/namespaces/x/y` means
/// resource `y` in namespace `x` or subresource `y` of namespace `x`.
pub fn parse_resource_path(
    method: &str,
    path: &str,
    watch_param: bool,
    namespaced: impl Fn(&str, &str, &str) -> bool,
) -> Option<ResourceRequest> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.is_empty() || rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let mut watch = watch_param;
    if rest[0] == "watch" {
        watch = true;
        rest = &rest[1..];
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, tail @ ..] if namespaced(group, version, resource) => {
            (Some((*ns).to_owned()), [&[*resource][..], tail].concat())
        }
        other => (None, other.to_vec()),
    };
    let (resource, name, subresource) = match rest.as_slice() {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    let verb = match (method, name.is_some()) {
        ("GET" | "HEAD", _) if watch => Verb::Watch,
        ("GET" | "HEAD", true) => Verb::Get,
        ("GET" | "HEAD", false) => Verb::List,
        ("POST", _) => Verb::Create,
        ("PUT", _) => Verb::Update,
        ("PATCH", _) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => return None,
    };
    Some(ResourceRequest {
        verb,
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: resource.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

/// The query parameters of a request, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    params: BTreeMap<String, Vec<String>>,
}

impl Query {
    /// Decodes a query string (`a=1&b=x%20y`).
    pub fn parse(query: Option<&str>) -> Self {
        let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            params
                .entry(key.into_owned())
                .or_default()
                .push(value.into_owned());
        }
        Self { params }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> &[String] {
        self.params.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// `key` as a boolean, spelt as Go's `strconv.ParseBool` accepts
    /// (`true`, `True`, `1`, `t` …); absent is `false`.
    pub fn flag(&self, key: &str) -> Result<bool, StatusError> {
        match self.get(key) {
            None | Some("" | "false" | "False" | "FALSE" | "f" | "F" | "0") => Ok(false),
            Some("true" | "True" | "TRUE" | "t" | "T" | "1") => Ok(true),
            Some(other) => Err(StatusError::bad_request(format!(
                "invalid boolean value {other:?} for query parameter {key}"
            ))),
        }
    }

    /// `key` as a non-negative integer.
    pub fn number(&self, key: &str) -> Result<Option<i64>, StatusError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Some)
                .ok_or_else(|| {
                    StatusError::bad_request(format!("invalid value {text:?} for query parameter {key}: must be a non-negative integer"))
                }),
        }
    }

    /// Whether `dryRun=All` was asked for; other values are refused as
    /// kube-apiserver does.
    pub fn dry_run(&self) -> Result<bool, StatusError> {
        let mut dry = false;
        for value in self.all("dryRun") {
            match value.as_str() {
                "All" => dry = true,
                "" => {}
                other => {
                    return Err(StatusError::bad_request(format!(
                        "unsupported dryRun value {other:?}; supported values: \"All\""
                    )));
                }
            }
        }
        Ok(dry)
    }

    /// The `fieldValidation` directive; kube-apiserver's default is `Warn`.
    pub fn field_validation(&self) -> Result<FieldValidation, StatusError> {
        match self.get("fieldValidation") {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(StatusError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}; supported values: Ignore, Warn, Strict"
            ))),
        }
    }
}

/// How unknown or duplicate fields in a body are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Dropped silently.
    Ignore,
    /// Dropped, with a `Warning` header per field.
    Warn,
    /// Refused with 400.
    Strict,
}

/// The list and watch options of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `labelSelector`.
    pub label_selector: String,
    /// `fieldSelector`.
    pub field_selector: String,
    /// `limit`; `None` or 0 means all.
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
    /// `timeoutSeconds` of a watch.
    pub timeout_seconds: Option<u64>,
    /// `allowWatchBookmarks`.
    pub allow_bookmarks: bool,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
}

impl ListOptions {
    /// Reads the options from a query.
    pub fn from_query(query: &Query) -> Result<Self, StatusError> {
        let non_empty = |key: &str| query.get(key).filter(|v| !v.is_empty()).map(str::to_owned);
        let send_initial_events = match query.get("sendInitialEvents") {
            None | Some("") => None,
            Some(_) => Some(query.flag("sendInitialEvents")?),
        };
        let limit = query
            .number("limit")?
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0);
        let timeout_seconds = query
            .number("timeoutSeconds")?
            .and_then(|n| u64::try_from(n).ok());
        let options = Self {
            label_selector: query.get("labelSelector").unwrap_or("").to_owned(),
            field_selector: query.get("fieldSelector").unwrap_or("").to_owned(),
            limit,
            continue_token: non_empty("continue"),
            resource_version: non_empty("resourceVersion"),
            resource_version_match: non_empty("resourceVersionMatch"),
            timeout_seconds,
            allow_bookmarks: query.flag("allowWatchBookmarks")?,
            send_initial_events,
        };
        if let Some(rv_match) = &options.resource_version_match {
            if !matches!(rv_match.as_str(), "NotOlderThan" | "Exact") {
                return Err(StatusError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: {rv_match:?}: supported values: \"Exact\", \"NotOlderThan\""
                )));
            }
            // A streaming list (a watch with sendInitialEvents) may start
            // from no resourceVersion; anything else names one.
            if options.resource_version.is_none() && options.send_initial_events.is_none() {
                return Err(StatusError::bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ));
            }
        }
        if options.send_initial_events.is_some() {
            if options.resource_version_match.as_deref() != Some("NotOlderThan") {
                return Err(StatusError::bad_request(
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                ));
            }
            if !options.allow_bookmarks {
                return Err(StatusError::bad_request(
                    "allowWatchBookmarks must be set to true when sendInitialEvents is set",
                ));
            }
        }
        if options.continue_token.is_some()
            && options
                .resource_version
                .as_deref()
                .is_some_and(|rv| rv != "0")
        {
            return Err(StatusError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_namespaced(_group: &str, _version: &str, resource: &str) -> bool {
        matches!(resource, "pods" | "configmaps" | "events")
    }

    fn parse(method: &str, path: &str) -> Option<ResourceRequest> {
        parse_resource_path(method, path, false, core_namespaced)
    }

    #[test]
    fn paths_parse_into_their_parts() {
        let request = parse("GET", "/api/v1/namespaces/default/pods/p1/status").expect("parsed");
        assert_eq!(request.verb, Verb::Get);
        assert_eq!(request.namespace.as_deref(), Some("default"));
        assert_eq!(request.resource, "pods");
        assert_eq!(request.name.as_deref(), Some("p1"));
        assert_eq!(request.subresource.as_deref(), Some("status"));

        let request = parse("GET", "/apis/apps/v1/deployments").expect("parsed");
        assert_eq!((request.group.as_str(), request.verb), ("apps", Verb::List));

        let request = parse("PUT", "/api/v1/namespaces/ns1/finalize").expect("parsed");
        assert_eq!(request.resource, "namespaces");
        assert_eq!(request.name.as_deref(), Some("ns1"));
        assert_eq!(request.subresource.as_deref(), Some("finalize"));

        let request = parse("GET", "/api/v1/namespaces/ns1").expect("parsed");
        assert_eq!(
            (request.resource.as_str(), request.verb),
            ("namespaces", Verb::Get)
        );

        let request = parse("DELETE", "/api/v1/namespaces/ns1/configmaps").expect("parsed");
        assert_eq!(request.verb, Verb::DeleteCollection);

        let request = parse("GET", "/api/v1/watch/namespaces/ns1/pods").expect("parsed");
        assert_eq!(request.verb, Verb::Watch);
    }

    #[test]
    fn non_resource_paths_are_not_parsed() {
        for path in [
            "/api",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/api/v1/pods/a/b/c",
        ] {
            assert!(parse("GET", path).is_none(), "{path}");
        }
    }

    #[test]
    fn list_options_are_checked() {
        let query = Query::parse(Some(
            "limit=500&resourceVersion=0&labelSelector=app%3Dx&allowWatchBookmarks=true",
        ));
        let options = ListOptions::from_query(&query).expect("valid");
        assert_eq!(options.limit, Some(500));
        assert_eq!(options.label_selector, "app=x");
        assert!(options.allow_bookmarks);
        // A streaming list starts from no resourceVersion.
        let query = Query::parse(Some(
            "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
        ));
        let options = ListOptions::from_query(&query).expect("streaming list");
        assert_eq!(options.send_initial_events, Some(true));
        assert!(options.resource_version.is_none());
        for bad in [
            "limit=-1",
            "resourceVersionMatch=Exact",
            "continue=abc&resourceVersion=5",
            "allowWatchBookmarks=maybe",
            "sendInitialEvents=true&allowWatchBookmarks=true",
            "sendInitialEvents=true&resourceVersionMatch=NotOlderThan",
        ] {
            let query = Query::parse(Some(bad));
            assert_eq!(
                ListOptions::from_query(&query).map_err(|e| e.code()),
                Err(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn write_options_are_checked() {
        assert!(Query::parse(Some("dryRun=All")).dry_run().expect("valid"));
        assert!(Query::parse(Some("dryRun=Some")).dry_run().is_err());
        assert_eq!(
            Query::parse(Some("fieldValidation=Strict"))
                .field_validation()
                .expect("valid"),
            FieldValidation::Strict
        );
        assert_eq!(
            Query::parse(None).field_validation().expect("valid"),
            FieldValidation::Warn
        );
    }
}
