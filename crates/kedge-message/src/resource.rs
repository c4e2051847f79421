//! Resource strings (`route.resource`, protocol.md §2.1).
//!
//! Inside the cloud, a message for a node names it: `node/<node>/<namespace>/<type>[/<name>]`
//! for objects and `node/<node>/<type>[/<id>]` for devices, membership and
//! twins. On the link CloudHub strips the `node/<node>/` prefix going down
//! ([`trim_node_prefix`]) and puts it back coming up ([`add_node_prefix`]),
//! taking the node from the connection, never from the message.

use std::fmt;

/// The separator between tokens.
pub const SEPARATOR: char = '/';

/// The first token of a cloud-internal resource.
pub const NODE_PREFIX: &str = "node";

/// The namespace cluster-scoped objects use in resource strings.
pub const NULL_NAMESPACE: &str = "null";

/// A resource string that cannot be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    /// The string does not start with `node/<node>/`.
    #[error("resource {0:?} does not start with node/<node>/")]
    NoNode(String),
    /// A required token is missing or empty.
    #[error("resource {resource:?} has no {token}")]
    Missing {
        /// The resource string.
        resource: String,
        /// Which token is missing.
        token: &'static str,
    },
    /// A token holds the separator or is empty where one is required.
    #[error("{token} {value:?} is not a single non-empty resource token")]
    BadToken {
        /// Which token.
        token: &'static str,
        /// Its value.
        value: String,
    },
}

/// A cloud-internal resource for an object: `node/<node>/<namespace>/<type>[/<name>]`.
///
/// Tokens are read by position, as KubeEdge does: 1 is the node, 2 the
/// namespace, 3 the type and 4 the name. A name holding further slashes
/// (such as `membership/detail` under a device) keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeResource {
    /// The node the message is for or from.
    pub node: String,
    /// The namespace; [`NULL_NAMESPACE`] for cluster-scoped objects.
    pub namespace: String,
    /// The resource type token (see [`crate::resource_type`]).
    pub resource_type: String,
    /// The object name, when the message is about one object.
    pub name: Option<String>,
}

impl NodeResource {
    /// A resource for `node`, checking that every token is a single
    /// non-empty token.
    pub fn new(
        node: impl Into<String>,
        namespace: impl Into<String>,
        resource_type: impl Into<String>,
        name: Option<String>,
    ) -> Result<Self, ResourceError> {
        let resource = Self {
            node: node.into(),
            namespace: namespace.into(),
            resource_type: resource_type.into(),
            name,
        };
        check_token("node", &resource.node)?;
        check_token("namespace", &resource.namespace)?;
        check_token("resource type", &resource.resource_type)?;
        if let Some(name) = &resource.name {
            check_token("name", name)?;
        }
        Ok(resource)
    }

    /// Parse `node/<node>/<namespace>/<type>[/<name>]`.
    pub fn parse(resource: &str) -> Result<Self, ResourceError> {
        let mut tokens = resource.splitn(5, SEPARATOR);
        if tokens.next() != Some(NODE_PREFIX) {
            return Err(ResourceError::NoNode(resource.to_owned()));
        }
        let mut required = |token: &'static str| match tokens.next() {
            Some(value) if !value.is_empty() => Ok(value.to_owned()),
            _ => Err(ResourceError::Missing {
                resource: resource.to_owned(),
                token,
            }),
        };
        let node = required("node")?;
        let namespace = required("namespace")?;
        let resource_type = required("resource type")?;
        let name = tokens.next().filter(|n| !n.is_empty()).map(str::to_owned);
        Ok(Self {
            node,
            namespace,
            resource_type,
            name,
        })
    }

    /// The form the edge sees: `<namespace>/<type>[/<name>]`.
    pub fn edge_form(&self) -> String {
        let mut out = format!("{}/{}", self.namespace, self.resource_type);
        if let Some(name) = &self.name {
            out.push(SEPARATOR);
            out.push_str(name);
        }
        out
    }
}

impl fmt::Display for NodeResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{NODE_PREFIX}/{}/{}", self.node, self.edge_form())
    }
}

/// A cloud-internal device resource: `node/<node>/<type>[/<id>]`, such as
/// `node/n1/membership` or `node/n1/twin`.
pub fn device_resource(
    node: &str,
    resource_type: &str,
    id: Option<&str>,
) -> Result<String, ResourceError> {
    check_token("node", node)?;
    if resource_type.is_empty() {
        return Err(ResourceError::BadToken {
            token: "resource type",
            value: String::new(),
        });
    }
    let mut out = format!("{NODE_PREFIX}/{node}/{resource_type}");
    if let Some(id) = id.filter(|id| !id.is_empty()) {
        out.push(SEPARATOR);
        out.push_str(id);
    }
    Ok(out)
}

fn check_token(token: &'static str, value: &str) -> Result<(), ResourceError> {
    if value.is_empty() || value.contains(SEPARATOR) {
        return Err(ResourceError::BadToken {
            token,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// What CloudHub sends on the link: a resource that starts with `node` and
/// has at least three tokens loses its first two; anything else goes
/// unchanged (KubeEdge's TrimMessage, including its plain prefix test).
pub fn trim_node_prefix(resource: &str) -> &str {
    if !resource.starts_with(NODE_PREFIX) {
        return resource;
    }
    let mut splits = resource.match_indices(SEPARATOR);
    match (splits.next(), splits.next()) {
        (Some(_), Some((second, _))) => &resource[second + 1..],
        _ => resource,
    }
}

/// What CloudHub makes of a resource arriving from `node`: `node/<node>/<resource>`.
pub fn add_node_prefix(node: &str, resource: &str) -> String {
    format!("{NODE_PREFIX}/{node}/{resource}")
}

/// The node a downstream message is for: the token after the first `node`
/// token that is followed by a non-empty one.
pub fn target_node(resource: &str) -> Option<&str> {
    let tokens: Vec<&str> = resource.split(SEPARATOR).collect();
    tokens
        .windows(2)
        .find(|pair| pair[0] == NODE_PREFIX && !pair[1].is_empty())
        .map(|pair| pair[1])
}

/// The resource type of a cloud-internal resource: token 3, if present.
pub fn cloud_resource_type(resource: &str) -> Option<&str> {
    resource.split(SEPARATOR).nth(3).filter(|t| !t.is_empty())
}

/// The edge's reading of a trimmed resource, as MetaManager keys its store:
/// two tokens are `<namespace>/<type>`, three are `<namespace>/<type>/<name>`;
/// other shapes (`membership`, `twin`, `device/<id>/twin/edge_updated`) are
/// not object resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeResource<'a> {
    /// The namespace token.
    pub namespace: &'a str,
    /// The resource type token.
    pub resource_type: &'a str,
    /// The object name, for three tokens.
    pub name: Option<&'a str>,
}

impl<'a> EdgeResource<'a> {
    /// Parse a trimmed resource; `None` when it is not an object resource.
    pub fn parse(resource: &'a str) -> Option<Self> {
        let tokens: Vec<&str> = resource.split(SEPARATOR).collect();
        match tokens[..] {
            [namespace, resource_type] => Some(Self {
                namespace,
                resource_type,
                name: None,
            }),
            [namespace, resource_type, name] => Some(Self {
                namespace,
                resource_type,
                name: Some(name),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_resource_round_trips() {
        let r = NodeResource::parse("node/edge-1/default/pod/nginx").unwrap();
        assert_eq!(r.node, "edge-1");
        assert_eq!(r.namespace, "default");
        assert_eq!(r.resource_type, "pod");
        assert_eq!(r.name.as_deref(), Some("nginx"));
        assert_eq!(r.to_string(), "node/edge-1/default/pod/nginx");
        assert_eq!(r.edge_form(), "default/pod/nginx");
    }

    #[test]
    fn node_resource_without_name() {
        let r = NodeResource::parse("node/n1/default/podlist").unwrap();
        assert_eq!(r.name, None);
        assert_eq!(r.to_string(), "node/n1/default/podlist");
    }

    #[test]
    fn node_resource_rejects_bad_input() {
        assert!(matches!(
            NodeResource::parse("default/pod/x"),
            Err(ResourceError::NoNode(_))
        ));
        assert!(matches!(
            NodeResource::parse("node//default/pod"),
            Err(ResourceError::Missing { token: "node", .. })
        ));
        assert!(matches!(
            NodeResource::parse("node/n1/default"),
            Err(ResourceError::Missing {
                token: "resource type",
                ..
            })
        ));
        assert!(NodeResource::new("n/1", "default", "pod", None).is_err());
        assert!(NodeResource::new("n1", "", "pod", None).is_err());
    }

    #[test]
    fn trim_follows_cloudhub() {
        assert_eq!(
            trim_node_prefix("node/n1/default/pod/nginx"),
            "default/pod/nginx"
        );
        assert_eq!(trim_node_prefix("node/n1/membership"), "membership");
        assert_eq!(trim_node_prefix("node/n1/twin"), "twin");
        // Fewer than three tokens: unchanged.
        assert_eq!(trim_node_prefix("node/n1"), "node/n1");
        assert_eq!(trim_node_prefix("node"), "node");
        // Does not start with node: unchanged (upgrade jobs keep their form).
        assert_eq!(
            trim_node_prefix("upgrade/job1/node/n1"),
            "upgrade/job1/node/n1"
        );
    }

    #[test]
    fn add_is_the_inverse_of_trim() {
        let up = add_node_prefix("n1", "kube-node-lease/lease/n1");
        assert_eq!(up, "node/n1/kube-node-lease/lease/n1");
        assert_eq!(trim_node_prefix(&up), "kube-node-lease/lease/n1");
    }

    #[test]
    fn target_node_scans_for_node_token() {
        assert_eq!(target_node("node/n1/default/pod/x"), Some("n1"));
        assert_eq!(target_node("upgrade/job1/node/n2"), Some("n2"));
        assert_eq!(target_node("node//x"), None);
        assert_eq!(target_node("default/pod/x"), None);
    }

    #[test]
    fn device_resources() {
        assert_eq!(
            device_resource("n1", "membership", None).unwrap(),
            "node/n1/membership"
        );
        assert_eq!(
            device_resource("n1", "device", Some("d1")).unwrap(),
            "node/n1/device/d1"
        );
        assert!(device_resource("", "twin", None).is_err());
    }

    #[test]
    fn edge_resource_follows_metamanager() {
        let r = EdgeResource::parse("default/configmap/cfg").unwrap();
        assert_eq!(
            (r.namespace, r.resource_type, r.name),
            ("default", "configmap", Some("cfg"))
        );
        let r = EdgeResource::parse("default/podlist").unwrap();
        assert_eq!((r.resource_type, r.name), ("podlist", None));
        assert_eq!(EdgeResource::parse("membership"), None);
        assert_eq!(EdgeResource::parse("device/d1/twin/edge_updated"), None);
    }

    #[test]
    fn cloud_resource_type_is_token_three() {
        assert_eq!(
            cloud_resource_type("node/n1/default/podpatch/p"),
            Some("podpatch")
        );
        assert_eq!(cloud_resource_type("node/n1/membership"), None);
    }
}
