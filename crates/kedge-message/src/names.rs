//! The names KubeEdge gives to operations, groups, modules, sources and
//! resource types (protocol.md §2.2–2.4). Every module builds routes from
//! these constants so a misspelt name is a compile error, not a lost message.

/// Operations (`route.operation`).
pub mod operation {
    /// Create an object.
    pub const INSERT: &str = "insert";
    /// Update an object.
    pub const UPDATE: &str = "update";
    /// Delete an object.
    pub const DELETE: &str = "delete";
    /// Read an object or a list.
    pub const QUERY: &str = "query";
    /// Patch an object; the content is a patch as a JSON string.
    pub const PATCH: &str = "patch";
    /// Upload user data to the cloud router.
    pub const UPLOAD: &str = "upload";
    /// A reply; `parent_msg_id` names the request.
    pub const RESPONSE: &str = "response";
    /// An error reply; the content is the error text.
    pub const ERROR: &str = "error";
    /// The edge's heartbeat.
    pub const KEEPALIVE: &str = "keepalive";
    /// Cloud-internal: a node connected.
    pub const CONNECTED: &str = "connected";
    /// Cloud-internal: a node disconnected.
    pub const DISCONNECTED: &str = "disconnected";
    /// Edge-internal: the link came up or went down.
    pub const CONNECT: &str = "connect";
    /// DeviceTwin membership detail request.
    pub const GET: &str = "get";
    /// EventBus: publish to a topic.
    pub const PUBLISH: &str = "publish";
    /// EventBus: subscribe to a topic.
    pub const SUBSCRIBE: &str = "subscribe";
    /// EventBus: unsubscribe from a topic.
    pub const UNSUBSCRIBE: &str = "unsubscribe";
    /// EventBus: a message on a topic.
    pub const MESSAGE: &str = "message";
    /// EventBus: the result of a get.
    pub const GET_RESULT: &str = "get_result";
    /// Node upgrade job (v1.15).
    pub const UPGRADE: &str = "upgrade";
    /// Release a held upgrade (v1.22).
    pub const UNHOLD_UPGRADE: &str = "unhold-upgrade";
    /// Task manager: pre-pull images (v1.23).
    pub const PREPULL: &str = "prepull";
    /// Task manager: roll back an upgrade (v1.23).
    pub const ROLLBACK: &str = "rollback";
    /// Task manager: a node reports the status of an action (v1.23).
    pub const UPDATE_NODE_ACTION_STATUS: &str = "UpdateNodeActionStatus";
    /// DynamicController reply to a MetaServer application.
    pub const APPLICATION_RESPONSE: &str = "applicationResponse";
    /// Placeholder operation used by the edge MetaServer agent.
    pub const NULL: &str = "null";
    /// CSI: create a volume.
    pub const CREATE_VOLUME: &str = "createvolume";
    /// CSI: delete a volume.
    pub const DELETE_VOLUME: &str = "deletevolume";
    /// CSI: publish a volume to a node.
    pub const CONTROLLER_PUBLISH_VOLUME: &str = "controllerpublishvolume";
    /// CSI: unpublish a volume from a node.
    pub const CONTROLLER_UNPUBLISH_VOLUME: &str = "controllerunpublishvolume";
    /// Viaduct control: connection header (QUIC handshake).
    pub const HEADER: &str = "header";
    /// Viaduct control: configuration.
    pub const CONFIG: &str = "config";
    /// Viaduct control: ping.
    pub const PING: &str = "ping";
    /// Viaduct control: pong.
    pub const PONG: &str = "pong";

    /// The CSI volume operations, which are never acknowledged.
    pub const CSI: [&str; 4] = [
        CREATE_VOLUME,
        DELETE_VOLUME,
        CONTROLLER_PUBLISH_VOLUME,
        CONTROLLER_UNPUBLISH_VOLUME,
    ];

    /// Operations viaduct swallows on WebSocket and answers itself; an
    /// application message must never use them.
    pub const VIADUCT_CONTROL: [&str; 3] = [CONFIG, PING, PONG];
}

/// Groups (`route.group`): the module group a message is delivered to.
pub mod group {
    /// Wire group for Kubernetes objects.
    pub const RESOURCE: &str = "resource";
    /// Wire and edge group of DeviceTwin.
    pub const TWIN: &str = "twin";
    /// Wire group for function calls.
    pub const FUNC: &str = "func";
    /// Wire group for user (router) messages.
    pub const USER: &str = "user";
    /// Edge group of MetaManager.
    pub const META: &str = "meta";
    /// Edge group of EdgeHub.
    pub const HUB: &str = "hub";
    /// Edge group of EventBus and ServiceBus.
    pub const BUS: &str = "bus";
    /// Edge group of Edged.
    pub const EDGED: &str = "edged";
    /// Edge group of EdgeStream.
    pub const EDGE_STREAM: &str = "edgestream";
    /// Cloud group of CloudHub.
    pub const CLOUD_HUB: &str = "cloudhub";
    /// Cloud group of EdgeController.
    pub const EDGE_CONTROLLER: &str = "edgecontroller";
    /// Cloud group of DeviceController.
    pub const DEVICE_CONTROLLER: &str = "devicecontroller";
    /// Cloud group of NodeUpgradeJobController.
    pub const NODE_UPGRADE_JOB_CONTROLLER: &str = "nodeupgradejobcontroller";
    /// Cloud group of SyncController.
    pub const SYNC_CONTROLLER: &str = "synccontroller";
    /// Cloud group of DynamicController.
    pub const DYNAMIC_CONTROLLER: &str = "dynamiccontroller";
    /// Cloud group of PolicyController.
    pub const POLICY_CONTROLLER: &str = "policycontroller";
    /// Cloud group of CloudStream.
    pub const CLOUD_STREAM: &str = "cloudStream";
    /// Cloud group of the router.
    pub const ROUTER: &str = "router";
    /// Cloud and edge group of the task manager (v1.23).
    pub const TASK_MANAGER: &str = "taskmanager";
}

/// Module names (`route.source` of what a module sends).
pub mod module {
    /// Cloud: CloudHub.
    pub const CLOUD_HUB: &str = "cloudhub";
    /// Cloud: EdgeController.
    pub const EDGE_CONTROLLER: &str = "edgecontroller";
    /// Cloud: DeviceController.
    pub const DEVICE_CONTROLLER: &str = "devicecontroller";
    /// Cloud: NodeUpgradeJobController.
    pub const NODE_UPGRADE_JOB_CONTROLLER: &str = "nodeupgradejobcontroller";
    /// Cloud: SyncController.
    pub const SYNC_CONTROLLER: &str = "synccontroller";
    /// Cloud: DynamicController.
    pub const DYNAMIC_CONTROLLER: &str = "dynamiccontroller";
    /// Cloud: PolicyController.
    pub const POLICY_CONTROLLER: &str = "policycontroller";
    /// Cloud: CloudStream.
    pub const CLOUD_STREAM: &str = "cloudStream";
    /// Cloud: the router.
    pub const ROUTER: &str = "router";
    /// Cloud and edge: the task manager (v1.23).
    pub const TASK_MANAGER: &str = "taskmanager";
    /// Edge: EdgeHub. KubeEdge names it `websocket` even when QUIC is used.
    pub const EDGE_HUB: &str = "websocket";
    /// Edge: MetaManager.
    pub const META_MANAGER: &str = "metamanager";
    /// Edge: Edged.
    pub const EDGED: &str = "edged";
    /// Edge: DeviceTwin.
    pub const DEVICE_TWIN: &str = "twin";
    /// Edge: EventBus.
    pub const EVENT_BUS: &str = "eventbus";
    /// Edge: ServiceBus.
    pub const SERVICE_BUS: &str = "servicebus";
    /// Edge: EdgeStream.
    pub const EDGE_STREAM: &str = "edgestream";
}

/// Other `route.source` values seen on the wire.
pub mod source {
    /// EdgeHub's internal connection events.
    pub const EDGE_HUB_EVENTS: &str = "edgehub";
    /// The edge MetaServer (requests routed to DynamicController).
    pub const META_SERVER: &str = "metaserver";
    /// Router messages for EventBus.
    pub const ROUTER_EVENT_BUS: &str = "router_eventbus";
    /// Router messages for ServiceBus.
    pub const ROUTER_SERVICE_BUS: &str = "router_servicebus";
    /// The legacy source CloudHub filters.
    pub const EDGE_MANAGER: &str = "edgemgr";
}

/// Resource type tokens.
pub mod resource_type {
    /// A pod.
    pub const POD: &str = "pod";
    /// A config map.
    pub const CONFIGMAP: &str = "configmap";
    /// A service account token request.
    pub const SERVICE_ACCOUNT_TOKEN: &str = "serviceaccounttoken";
    /// A secret.
    pub const SECRET: &str = "secret";
    /// A node.
    pub const NODE: &str = "node";
    /// A pod list.
    pub const POD_LIST: &str = "podlist";
    /// Legacy pod status report.
    pub const POD_STATUS: &str = "podstatus";
    /// Pod status strategic-merge patch.
    pub const POD_PATCH: &str = "podpatch";
    /// Legacy node status report.
    pub const NODE_STATUS: &str = "nodestatus";
    /// Node status strategic-merge patch.
    pub const NODE_PATCH: &str = "nodepatch";
    /// A router rule.
    pub const RULE: &str = "rule";
    /// A router rule endpoint.
    pub const RULE_ENDPOINT: &str = "ruleendpoint";
    /// A router rule status.
    pub const RULE_STATUS: &str = "rulestatus";
    /// A node lease.
    pub const LEASE: &str = "lease";
    /// Service account access.
    pub const SERVICE_ACCOUNT_ACCESS: &str = "serviceaccountaccess";
    /// A persistent volume.
    pub const PERSISTENT_VOLUME: &str = "persistentvolume";
    /// A persistent volume claim.
    pub const PERSISTENT_VOLUME_CLAIM: &str = "persistentvolumeclaim";
    /// A volume attachment.
    pub const VOLUME_ATTACHMENT: &str = "volumeattachment";
    /// A CSI volume.
    pub const VOLUME: &str = "volume";
    /// A device.
    pub const DEVICE: &str = "device";
    /// A device model.
    pub const DEVICE_MODEL: &str = "devicemodel";
    /// Device membership of a node.
    pub const MEMBERSHIP: &str = "membership";
    /// Membership detail request from the edge.
    pub const MEMBERSHIP_DETAIL: &str = "membership/detail";
    /// Device twin.
    pub const TWIN: &str = "twin";
    /// Twin updated in the cloud.
    pub const TWIN_CLOUD_UPDATED: &str = "twin/cloud_updated";
    /// Twin updated at the edge.
    pub const TWIN_EDGE_UPDATED: &str = "twin/edge_updated";
    /// MetaServer application.
    pub const APPLICATION: &str = "Application";
    /// MetaServer watch-application sync.
    pub const WATCH_APP_SYNC: &str = "watchapp/sync";
    /// Edge-internal link state events.
    pub const NODE_CONNECTION: &str = "node/connection";
    /// An event (v1.19).
    pub const EVENT: &str = "event";
    /// A certificate signing request (v1.17).
    pub const CERTIFICATE_SIGNING_REQUEST: &str = "certificatesigningrequest";
    /// The cluster CA certificate (v1.17).
    pub const K8S_CA: &str = "k8s/ca.crt";
}
