//! Which downstream messages need an acknowledgement from the edge
//! (protocol.md §5.1, KubeEdge's `noAckRequired`).

use crate::{Message, content, group, module, operation, resource, resource_type};

/// Whether a downstream message must be resent until the edge
/// acknowledges it. The resource may be the cloud-internal form
/// (`node/<node>/<ns>/<type>/…`) or the form the edge sees
/// (`<ns>/<type>/…`, after CloudHub trimmed it): both give the same
/// answer.
///
/// Everything is ACK mode except: pod lists, membership, cloud twin updates
/// and service account tokens; CSI and application replies; the user group;
/// node upgrade jobs; replies whose content is `"OK"` or a Kubernetes error,
/// and error replies; and EdgeController's node, lease, node and pod patch,
/// pod status and pod replies.
pub fn needs_ack(msg: &Message) -> bool {
    !no_ack(msg)
}

fn no_ack(msg: &Message) -> bool {
    let route = &msg.router;
    let res = route.resource.as_str();
    if res.contains(resource_type::POD_LIST)
        || res.contains(resource_type::MEMBERSHIP)
        || res.contains(resource_type::TWIN_CLOUD_UPDATED)
        || res.contains(resource_type::SERVICE_ACCOUNT_TOKEN)
        || operation::CSI.contains(&route.operation.as_str())
        || route.operation == operation::APPLICATION_RESPONSE
        || route.operation == operation::ERROR
        || route.group == group::USER
        || route.source == module::NODE_UPGRADE_JOB_CONTROLLER
    {
        return true;
    }
    if route.operation == operation::RESPONSE
        && (content::is_ok(&msg.content) || content::is_status_error(&msg.content))
    {
        return true;
    }
    if route.source == module::EDGE_CONTROLLER {
        let kind = if res.starts_with("node/") {
            resource::cloud_resource_type(res)
        } else {
            resource::EdgeResource::parse(res).map(|r| r.resource_type)
        }
        .unwrap_or_default();
        return matches!(
            kind,
            resource_type::NODE
                | resource_type::LEASE
                | resource_type::NODE_PATCH
                | resource_type::POD_PATCH
                | resource_type::POD_STATUS
        ) || (kind == resource_type::POD && route.operation == operation::RESPONSE);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn msg(source: &str, grp: &str, op: &str, res: &str, content: Value) -> Message {
        Message::new(source, grp, op, res, content)
    }

    #[test]
    fn the_trimmed_form_is_classified_as_the_cloud_form() {
        for (res, ack) in [
            ("default/node/n1", false),
            ("kube-node-lease/lease/n1", false),
            ("default/nodepatch/n1", false),
            ("default/podpatch/p", false),
            ("default/configmap/c", true),
        ] {
            let reply = msg(
                "edgecontroller",
                "resource",
                "response",
                res,
                json!({"kind": "X"}),
            );
            let cloud = msg(
                "edgecontroller",
                "resource",
                "response",
                &format!("node/n1/{res}"),
                json!({"kind": "X"}),
            );
            assert_eq!(needs_ack(&reply), ack, "{res}");
            assert_eq!(needs_ack(&cloud), ack, "node/n1/{res}");
        }
    }

    #[test]
    fn objects_need_ack() {
        for kind in ["pod", "configmap", "secret", "device", "devicemodel"] {
            let m = msg(
                "edgecontroller",
                "resource",
                "insert",
                &format!("node/n1/default/{kind}/x"),
                json!({}),
            );
            assert!(needs_ack(&m), "{kind}");
        }
        let reply = msg(
            "edgecontroller",
            "resource",
            "response",
            "node/n1/default/configmap/c",
            json!({"kind": "ConfigMap"}),
        );
        assert!(needs_ack(&reply));
    }

    #[test]
    fn exceptions_need_no_ack() {
        let cases = [
            msg(
                "devicecontroller",
                "twin",
                "update",
                "node/n1/membership",
                json!({}),
            ),
            msg(
                "edgecontroller",
                "resource",
                "response",
                "node/n1/default/configmap/c",
                json!("OK"),
            ),
            msg(
                "edgecontroller",
                "resource",
                "response",
                "node/n1/default/configmap/c",
                json!({"ErrStatus": {"code": 404}}),
            ),
            msg(
                "edgecontroller",
                "resource",
                "response",
                "node/n1/default/podpatch/p",
                json!({"Object": {}, "Err": null}),
            ),
            msg(
                "edgecontroller",
                "resource",
                "response",
                "node/n1/default/pod/p",
                json!({}),
            ),
            msg(
                "edgecontroller",
                "resource",
                "update",
                "node/n1/default/node/n1",
                json!({}),
            ),
            msg(
                "edgecontroller",
                "resource",
                "response",
                "node/n1/kube-node-lease/lease/n1",
                json!({}),
            ),
            msg("router", "user", "publish", "node/n1/topic", json!({})),
            msg(
                "nodeupgradejobcontroller",
                "nodeupgradejobcontroller",
                "upgrade",
                "upgrade/j/node/n1",
                json!({}),
            ),
            msg(
                "cloudhub",
                "resource",
                "createvolume",
                "node/n1/default/volume/v",
                json!({}),
            ),
            msg(
                "edgecontroller",
                "resource",
                "response",
                "node/n1/default/serviceaccounttoken/sa",
                json!({}),
            ),
        ];
        for m in cases {
            assert!(!needs_ack(&m), "{:?}", m.router);
        }
    }

    #[test]
    fn pod_insert_from_other_sources_needs_ack() {
        let m = msg(
            "dynamiccontroller",
            "resource",
            "response",
            "node/n1/default/pod/p",
            json!({}),
        );
        assert!(needs_ack(&m));
    }
}
