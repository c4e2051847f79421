//! Server-side printing: the `meta.k8s.io/v1` `Table` kubectl asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with the
//! columns kube-apiserver prints for the common kinds and the
//! `additionalPrinterColumns` of custom resources.

use serde_json::{Value, json};

use crate::request::Query;
use crate::resources::ResourceType;
use crate::status::StatusError;

/// One column: name, type, priority (1 = only with `-o wide`), cell.
struct Column {
    name: String,
    kind: &'static str,
    format: &'static str,
    priority: i64,
    description: String,
    cell: Cell,
}

/// How a column's cell is computed.
enum Cell {
    Builtin(fn(&Value) -> Value),
    Path(String),
    Age,
}

fn col(name: &str, kind: &'static str, priority: i64, cell: fn(&Value) -> Value) -> Column {
    Column {
        name: name.to_owned(),
        kind,
        format: if name == "Name" { "name" } else { "" },
        priority,
        description: String::new(),
        cell: Cell::Builtin(cell),
    }
}

fn age() -> Column {
    Column {
        name: "Age".to_owned(),
        kind: "string",
        format: "",
        priority: 0,
        description: "CreationTimestamp is a timestamp representing the server time when this object was created."
            .to_owned(),
        cell: Cell::Age,
    }
}

fn s<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn n(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn or_none(text: String) -> Value {
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

fn name(o: &Value) -> Value {
    json!(s(o, "/metadata/name"))
}

/// kubectl's human duration (`45s`, `3m12s`, `5h`, `2d4h`, `3y`).
pub fn human_duration(seconds: i64) -> String {
    if seconds < 0 {
        return "<invalid>".to_owned();
    }
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            rest => format!("{hours}h{rest}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            rest => format!("{days}d{rest}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{}y", days / 365),
            rest => format!("{}y{rest}d", days / 365),
        }
    } else {
        format!("{}y", days / 365)
    }
}

fn since(timestamp: &str) -> Value {
    match timestamp.parse::<jiff::Timestamp>() {
        Ok(then) => json!(human_duration(
            jiff::Timestamp::now().as_second() - then.as_second()
        )),
        Err(_) => json!("<unknown>"),
    }
}

fn pod_status(o: &Value) -> Value {
    let mut reason = s(o, "/status/reason").to_owned();
    if reason.is_empty() {
        reason = s(o, "/status/phase").to_owned();
    }
    for (i, status) in arr(o, "/status/initContainerStatuses").iter().enumerate() {
        let terminated = status.pointer("/state/terminated");
        if terminated.is_some_and(|t| n(t, "/exitCode") == 0) {
            continue;
        }
        let total = arr(o, "/spec/initContainers").len();
        reason = if let Some(t) = terminated {
            match s(t, "/reason") {
                "" => format!("Init:ExitCode:{}", n(t, "/exitCode")),
                r => format!("Init:{r}"),
            }
        } else {
            match s(status, "/state/waiting/reason") {
                "" | "PodInitializing" => format!("Init:{i}/{total}"),
                r => format!("Init:{r}"),
            }
        };
        return json!(reason);
    }
    let mut running = false;
    for status in arr(o, "/status/containerStatuses").iter().rev() {
        let waiting = s(status, "/state/waiting/reason");
        let terminated = status.pointer("/state/terminated");
        if !waiting.is_empty() {
            reason = waiting.to_owned();
        } else if let Some(t) = terminated {
            reason = match (s(t, "/reason"), n(t, "/signal")) {
                ("", 0) => format!("ExitCode:{}", n(t, "/exitCode")),
                ("", signal) => format!("Signal:{signal}"),
                (r, _) => r.to_owned(),
            };
        } else if status.get("ready").and_then(Value::as_bool) == Some(true)
            && status.pointer("/state/running").is_some()
        {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".to_owned();
    }
    if o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        reason = if s(o, "/status/reason") == "NodeLost" {
            "Unknown".to_owned()
        } else {
            "Terminating".to_owned()
        };
    }
    json!(reason)
}

fn pod_ready(o: &Value) -> Value {
    let total = arr(o, "/spec/containers").len();
    let ready = arr(o, "/status/containerStatuses")
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    json!(format!("{ready}/{total}"))
}

fn pod_restarts(o: &Value) -> Value {
    let restarts: i64 = arr(o, "/status/containerStatuses")
        .iter()
        .map(|c| n(c, "/restartCount"))
        .sum();
    json!(restarts)
}

fn node_status(o: &Value) -> Value {
    let ready = arr(o, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready")
        .map(|c| s(c, "/status"));
    let mut status = match ready {
        Some("True") => "Ready".to_owned(),
        Some(_) => "NotReady".to_owned(),
        None => "Unknown".to_owned(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    json!(status)
}

fn node_roles(o: &Value) -> Value {
    let mut roles: Vec<String> = Vec::new();
    if let Some(labels) = o.pointer("/metadata/labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.push(role.to_owned());
                }
            } else if key == "kubernetes.io/role"
                && let Some(role) = value.as_str().filter(|r| !r.is_empty())
            {
                roles.push(role.to_owned());
            }
        }
    }
    roles.sort();
    roles.dedup();
    or_none(roles.join(","))
}

fn node_address(o: &Value, kind: &str) -> Value {
    let address = arr(o, "/status/addresses")
        .iter()
        .find(|a| s(a, "/type") == kind)
        .map(|a| s(a, "/address").to_owned())
        .unwrap_or_default();
    or_none(address)
}

fn data_count(o: &Value) -> Value {
    let count = |key: &str| {
        o.get(key)
            .and_then(Value::as_object)
            .map_or(0, serde_json::Map::len)
    };
    json!(count("data") + count("binaryData") + count("stringData"))
}

fn service_ports(o: &Value) -> Value {
    let ports: Vec<String> = arr(o, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = match s(p, "/protocol") {
                "" => "TCP",
                other => other,
            };
            match n(p, "/nodePort") {
                0 => format!("{}/{protocol}", n(p, "/port")),
                node_port => format!("{}:{node_port}/{protocol}", n(p, "/port")),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn external_ips(o: &Value) -> Value {
    let mut ips: Vec<String> = arr(o, "/status/loadBalancer/ingress")
        .iter()
        .map(|i| {
            let ip = s(i, "/ip");
            if ip.is_empty() {
                s(i, "/hostname").to_owned()
            } else {
                ip.to_owned()
            }
        })
        .collect();
    ips.extend(
        arr(o, "/spec/externalIPs")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned),
    );
    if ips.is_empty() && s(o, "/spec/type") == "LoadBalancer" {
        return json!("<pending>");
    }
    or_none(ips.join(","))
}

fn selector_text(o: &Value) -> Value {
    match o.pointer("/spec/selector") {
        Some(Value::Object(map))
            if map.contains_key("matchLabels") || map.contains_key("matchExpressions") =>
        {
            or_none(
                crate::selector::label_selector_string(&Value::Object(map.clone()))
                    .unwrap_or_default(),
            )
        }
        Some(Value::Object(map)) => or_none(
            map.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        _ => json!("<none>"),
    }
}

fn template_containers(o: &Value) -> Value {
    or_none(
        arr(o, "/spec/template/spec/containers")
            .iter()
            .map(|c| s(c, "/name"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn template_images(o: &Value) -> Value {
    or_none(
        arr(o, "/spec/template/spec/containers")
            .iter()
            .map(|c| s(c, "/image"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn endpoints_text(o: &Value) -> Value {
    let mut out = Vec::new();
    for subset in arr(o, "/subsets") {
        let ports = arr(subset, "/ports");
        for address in arr(subset, "/addresses") {
            let ip = s(address, "/ip");
            if ports.is_empty() {
                out.push(ip.to_owned());
            }
            for port in ports {
                out.push(format!("{ip}:{}", n(port, "/port")));
            }
        }
    }
    let more = out.len().saturating_sub(3);
    out.truncate(3);
    let mut text = out.join(",");
    if more > 0 {
        text.push_str(&format!(" + {more} more..."));
    }
    or_none(text)
}

fn job_status(o: &Value) -> Value {
    let has = |kind: &str| {
        arr(o, "/status/conditions")
            .iter()
            .any(|c| s(c, "/type") == kind && s(c, "/status") == "True")
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if o.pointer("/status/startTime").is_some() {
        "Running"
    } else {
        "Pending"
    };
    json!(status)
}

fn job_duration(o: &Value) -> Value {
    let start = s(o, "/status/startTime").parse::<jiff::Timestamp>();
    let end = match s(o, "/status/completionTime") {
        "" => Ok(jiff::Timestamp::now()),
        text => text.parse::<jiff::Timestamp>(),
    };
    match (start, end) {
        (Ok(start), Ok(end)) => json!(human_duration(end.as_second() - start.as_second())),
        _ => json!(""),
    }
}

/// The columns of a built-in kind.
fn builtin_columns(group: &str, kind: &str) -> Vec<Column> {
    let mut columns = vec![col("Name", "string", 0, name)];
    match (group, kind) {
        ("", "Pod") => columns.extend([
            col("Ready", "string", 0, pod_ready),
            col("Status", "string", 0, pod_status),
            col("Restarts", "string", 0, pod_restarts),
            age(),
            col("IP", "string", 1, |o| {
                or_none(s(o, "/status/podIP").to_owned())
            }),
            col("Node", "string", 1, |o| {
                or_none(s(o, "/spec/nodeName").to_owned())
            }),
            col("Nominated Node", "string", 1, |o| {
                or_none(s(o, "/status/nominatedNodeName").to_owned())
            }),
            col("Readiness Gates", "string", 1, |o| {
                let gates = arr(o, "/spec/readinessGates");
                if gates.is_empty() {
                    json!("<none>")
                } else {
                    json!(format!("0/{}", gates.len()))
                }
            }),
        ]),
        ("", "Namespace") => columns.extend([
            col("Status", "string", 0, |o| json!(s(o, "/status/phase"))),
            age(),
        ]),
        ("", "Node") => columns.extend([
            col("Status", "string", 0, node_status),
            col("Roles", "string", 0, node_roles),
            age(),
            col("Version", "string", 0, |o| {
                json!(s(o, "/status/nodeInfo/kubeletVersion"))
            }),
            col("Internal-IP", "string", 1, |o| {
                node_address(o, "InternalIP")
            }),
            col("External-IP", "string", 1, |o| {
                node_address(o, "ExternalIP")
            }),
            col("OS-Image", "string", 1, |o| {
                json!(s(o, "/status/nodeInfo/osImage"))
            }),
            col("Kernel-Version", "string", 1, |o| {
                json!(s(o, "/status/nodeInfo/kernelVersion"))
            }),
            col("Container-Runtime", "string", 1, |o| {
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion"))
            }),
        ]),
        ("", "ConfigMap") => columns.extend([col("Data", "integer", 0, data_count), age()]),
        ("", "Secret") => columns.extend([
            col("Type", "string", 0, |o| json!(s(o, "/type"))),
            col("Data", "integer", 0, data_count),
            age(),
        ]),
        ("", "Service") => columns.extend([
            col("Type", "string", 0, |o| json!(s(o, "/spec/type"))),
            col("Cluster-IP", "string", 0, |o| {
                or_none(s(o, "/spec/clusterIP").to_owned())
            }),
            col("External-IP", "string", 0, external_ips),
            col("Port(s)", "string", 0, service_ports),
            age(),
            col("Selector", "string", 1, selector_text),
        ]),
        ("", "Endpoints") => columns.extend([col("Endpoints", "string", 0, endpoints_text), age()]),
        ("", "ServiceAccount") => columns.extend([
            col("Secrets", "string", 0, |o| json!(arr(o, "/secrets").len())),
            age(),
        ]),
        ("", "PersistentVolumeClaim") => columns.extend([
            col("Status", "string", 0, |o| json!(s(o, "/status/phase"))),
            col("Volume", "string", 0, |o| json!(s(o, "/spec/volumeName"))),
            col("Capacity", "string", 0, |o| {
                json!(s(o, "/status/capacity/storage"))
            }),
            col("Access Modes", "string", 0, |o| {
                json!(
                    arr(o, "/status/accessModes")
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|m| match m {
                            "ReadWriteOnce" => "RWO",
                            "ReadOnlyMany" => "ROX",
                            "ReadWriteMany" => "RWX",
                            "ReadWriteOncePod" => "RWOP",
                            other => other,
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                )
            }),
            col("StorageClass", "string", 0, |o| {
                or_none(s(o, "/spec/storageClassName").to_owned())
            }),
            age(),
        ]),
        ("", "Event") => {
            columns = vec![
                col("Last Seen", "string", 0, |o| {
                    let last = match s(o, "/lastTimestamp") {
                        "" => s(o, "/eventTime"),
                        t => t,
                    };
                    since(last)
                }),
                col("Type", "string", 0, |o| json!(s(o, "/type"))),
                col("Reason", "string", 0, |o| json!(s(o, "/reason"))),
                col("Object", "string", 0, |o| {
                    json!(format!(
                        "{}/{}",
                        s(o, "/involvedObject/kind").to_lowercase(),
                        s(o, "/involvedObject/name")
                    ))
                }),
                col("Message", "string", 0, |o| json!(s(o, "/message").trim())),
            ];
        }
        ("apps", "Deployment") => columns.extend([
            col("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                ))
            }),
            col("Up-to-date", "integer", 0, |o| {
                json!(n(o, "/status/updatedReplicas"))
            }),
            col("Available", "integer", 0, |o| {
                json!(n(o, "/status/availableReplicas"))
            }),
            age(),
            col("Containers", "string", 1, template_containers),
            col("Images", "string", 1, template_images),
            col("Selector", "string", 1, selector_text),
        ]),
        ("apps", "ReplicaSet") => columns.extend([
            col("Desired", "integer", 0, |o| json!(n(o, "/spec/replicas"))),
            col("Current", "integer", 0, |o| json!(n(o, "/status/replicas"))),
            col("Ready", "integer", 0, |o| {
                json!(n(o, "/status/readyReplicas"))
            }),
            age(),
            col("Containers", "string", 1, template_containers),
            col("Images", "string", 1, template_images),
            col("Selector", "string", 1, selector_text),
        ]),
        ("apps", "StatefulSet") => columns.extend([
            col("Ready", "string", 0, |o| {
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                ))
            }),
            age(),
            col("Containers", "string", 1, template_containers),
            col("Images", "string", 1, template_images),
        ]),
        ("apps", "DaemonSet") => columns.extend([
            col("Desired", "integer", 0, |o| {
                json!(n(o, "/status/desiredNumberScheduled"))
            }),
            col("Current", "integer", 0, |o| {
                json!(n(o, "/status/currentNumberScheduled"))
            }),
            col("Ready", "integer", 0, |o| {
                json!(n(o, "/status/numberReady"))
            }),
            col("Up-to-date", "integer", 0, |o| {
                json!(n(o, "/status/updatedNumberScheduled"))
            }),
            col("Available", "integer", 0, |o| {
                json!(n(o, "/status/numberAvailable"))
            }),
            col("Node Selector", "string", 0, |o| {
                or_none(
                    o.pointer("/spec/template/spec/nodeSelector")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default(),
                )
            }),
            age(),
        ]),
        ("batch", "Job") => columns.extend([
            col("Status", "string", 0, job_status),
            col("Completions", "string", 0, |o| {
                let completions = o.pointer("/spec/completions").and_then(Value::as_i64);
                match completions {
                    Some(c) => json!(format!("{}/{c}", n(o, "/status/succeeded"))),
                    None => json!(format!(
                        "{}/1 of {}",
                        n(o, "/status/succeeded"),
                        n(o, "/spec/parallelism").max(1)
                    )),
                }
            }),
            col("Duration", "string", 0, job_duration),
            age(),
        ]),
        ("coordination.k8s.io", "Lease") => columns.extend([
            col("Holder", "string", 0, |o| {
                json!(s(o, "/spec/holderIdentity"))
            }),
            age(),
        ]),
        ("discovery.k8s.io", "EndpointSlice") => columns.extend([
            col("AddressType", "string", 0, |o| json!(s(o, "/addressType"))),
            col("Ports", "string", 0, |o| {
                let ports: Vec<String> = arr(o, "/ports")
                    .iter()
                    .map(|p| n(p, "/port").to_string())
                    .collect();
                or_none(ports.join(","))
            }),
            col("Endpoints", "string", 0, |o| {
                let addresses: Vec<&str> = arr(o, "/endpoints")
                    .iter()
                    .flat_map(|e| arr(e, "/addresses"))
                    .filter_map(Value::as_str)
                    .collect();
                or_none(addresses.join(","))
            }),
            age(),
        ]),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => columns.push(Column {
            name: "Created At".to_owned(),
            kind: "date",
            format: "",
            priority: 0,
            description: String::new(),
            cell: Cell::Path(".metadata.creationTimestamp".to_owned()),
        }),
        _ => columns.push(age()),
    }
    columns
}

/// The columns of a custom resource: its printer columns, then Age.
fn custom_columns(resource: &ResourceType) -> Vec<Column> {
    let mut columns = vec![col("Name", "string", 0, name)];
    let mut has_age = false;
    for column in &resource.printer_columns {
        let path = s(column, "/jsonPath").to_owned();
        has_age |= path == ".metadata.creationTimestamp";
        columns.push(Column {
            name: s(column, "/name").to_owned(),
            kind: match s(column, "/type") {
                "integer" => "integer",
                "number" => "number",
                "boolean" => "boolean",
                "date" => "date",
                _ => "string",
            },
            format: "",
            priority: n(column, "/priority"),
            description: s(column, "/description").to_owned(),
            cell: Cell::Path(path),
        });
    }
    if !has_age {
        columns.push(age());
    }
    columns
}

/// Evaluates the simple JSONPath forms printer columns use: `.a.b`,
/// `.a[0].b`, `.a[?(@.type=="Ready")].status`.
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            current = current.get(&after[..end])?;
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            let index = &after[..end];
            rest = &after[end + 1..];
            if let Some(filter) = index.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                let (field, wanted) = filter.split_once("==")?;
                let wanted = wanted.trim().trim_matches(['"', '\'']);
                current = current
                    .as_array()?
                    .iter()
                    .find(|item| item.get(field.trim()).and_then(Value::as_str) == Some(wanted))?;
            } else {
                current = current.as_array()?.get(index.parse::<usize>().ok()?)?;
            }
        } else {
            return None;
        }
    }
    Some(current)
}

fn cell(column: &Column, object: &Value) -> Value {
    match &column.cell {
        Cell::Builtin(f) => f(object),
        Cell::Age => since(s(object, "/metadata/creationTimestamp")),
        Cell::Path(path) => match json_path(object, path) {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(text)) if column.kind == "date" => since(text),
            Some(value) => value.clone(),
        },
    }
}

fn columns_for(resource: &ResourceType) -> Vec<Column> {
    if resource.crd.is_some() {
        custom_columns(resource)
    } else {
        builtin_columns(&resource.group, &resource.kind)
    }
}

fn definitions(columns: &[Column]) -> Value {
    Value::Array(
        columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": if c.kind == "date" { "date" } else { c.kind },
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

fn row(columns: &[Column], object: &Value, include: &str) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| cell(c, object)).collect();
    let mut row = json!({ "cells": cells });
    match include {
        "Object" => row["object"] = object.clone(),
        "Metadata" => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
        }
        _ => {}
    }
    row
}

fn include_object(query: &Query) -> Result<&str, StatusError> {
    match query.get("includeObject").unwrap_or("Metadata") {
        "" | "Metadata" => Ok("Metadata"),
        "Object" => Ok("Object"),
        "None" => Ok("None"),
        other => Err(StatusError::bad_request(format!(
            "includeObject: unsupported value {other:?}; supported values: \"None\", \"Metadata\", \"Object\""
        ))),
    }
}

/// The Table of `items` of `resource`.
pub fn table(
    resource: &ResourceType,
    items: &[Value],
    query: &Query,
    resource_version: Option<String>,
    continue_token: Option<String>,
) -> Result<Value, StatusError> {
    let include = include_object(query)?;
    let columns = columns_for(resource);
    let mut metadata = json!({});
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|item| row(&columns, item, include))
        .collect();
    // Built by hand: `json!` would serialise the rows into a copy.
    let mut table = serde_json::Map::new();
    table.insert("kind".to_owned(), json!("Table"));
    table.insert("apiVersion".to_owned(), json!("meta.k8s.io/v1"));
    table.insert("metadata".to_owned(), metadata);
    table.insert("columnDefinitions".to_owned(), definitions(&columns));
    table.insert("rows".to_owned(), Value::Array(rows));
    Ok(Value::Object(table))
}

/// A watch event's object as a one-row Table.
pub fn watch_row(resource: &ResourceType, object: &Value, query: &Query) -> Option<Value> {
    let include = include_object(query).ok()?;
    let columns = columns_for(resource);
    let mut metadata = json!({});
    if let Some(rv) = object.pointer("/metadata/resourceVersion") {
        metadata["resourceVersion"] = rv.clone();
    }
    Some(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions(&columns),
        "rows": [row(&columns, object, include)],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Catalog;

    fn resource(group: &str, plural: &str) -> std::sync::Arc<ResourceType> {
        Catalog::new().get(group, "v1", plural).expect("served")
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(52 * 3600), "2d4h");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(-1), "<invalid>");
    }

    #[test]
    fn pod_rows() {
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "edge-1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let t = table(
            &resource("", "pods"),
            &[pod],
            &Query::default(),
            Some("7".into()),
            None,
        )
        .unwrap();
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 5);
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(cells[6], "edge-1");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }

    #[test]
    fn node_rows() {
        let node = json!({"metadata": {"name": "edge-1", "labels": {"node-role.kubernetes.io/edge": "", "node-role.kubernetes.io/agent": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.32.0"}}});
        let t = table(
            &resource("", "nodes"),
            &[node],
            &Query::default(),
            None,
            None,
        )
        .unwrap();
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "agent,edge");
        assert_eq!(cells[4], "v1.32.0");
    }

    #[test]
    fn json_paths() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "x"}, {"type": "Ready", "status": "True"}]}, "spec": {"list": [1, 2]}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&o, ".spec.list[1]"), Some(&json!(2)));
        assert_eq!(json_path(&o, ".spec.missing"), None);
    }

    #[test]
    fn include_object_is_checked() {
        let query = Query::parse(Some("includeObject=Everything"));
        assert_eq!(
            table(&resource("", "configmaps"), &[], &query, None, None)
                .unwrap_err()
                .code(),
            400
        );
        let query = Query::parse(Some("includeObject=None"));
        let t = table(
            &resource("", "configmaps"),
            &[json!({"metadata": {"name": "c"}, "data": {"a": "1"}})],
            &query,
            None,
            None,
        )
        .unwrap();
        assert!(t["rows"][0].get("object").is_none());
        assert_eq!(t["rows"][0]["cells"][1], 1);
    }
}
