//! The kubectl acceptance suite: the real kubectl against a real cloudcore
//! and its embedded control plane, on SQLite and on a real etcd.

mod support;

use base64::Engine as _;

use support::{Backend, Cloud};

/// Runs one scenario against a fresh cloud on each backend.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let cloud = super::Cloud::start(super::Backend::start(false).await).await;
                    super::$scenario(&cloud).await;
                    cloud.stop().await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let cloud = super::Cloud::start(super::Backend::start(true).await).await;
                    super::$scenario(&cloud).await;
                    cloud.stop().await;
                }
            )*
        }
    };
}

on_both_backends!(
    discovery_and_version,
    namespaces_and_output_formats,
    apply_edit_patch_label_annotate,
    deployments_scale_and_wait,
    pods_watch_and_delete,
    custom_resources,
    bad_input_is_refused_cleanly,
    cascading_deletion,
    nodes_are_held_to_their_own_objects,
    pods_are_scheduled,
);

async fn discovery_and_version(cloud: &Cloud) {
    let version = cloud.ok(&["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&version).expect("version JSON");
    assert_eq!(version["serverVersion"]["major"], "1");
    assert_eq!(version["serverVersion"]["minor"], "32");

    let resources = cloud.ok(&["api-resources"]);
    for line in [
        "pods ",
        "po ",
        "deployments",
        "deploy",
        "customresourcedefinitions",
        "leases",
    ] {
        assert!(
            resources.contains(line),
            "api-resources lacks {line:?}:\n{resources}"
        );
    }
    let versions = cloud.ok(&["api-versions"]);
    for group_version in ["apps/v1", "batch/v1", "coordination.k8s.io/v1", "v1"] {
        assert!(versions.lines().any(|l| l == group_version), "{versions}");
    }
    // kubectl explain reads the built-in schemas from /openapi/v3.
    let explained = cloud.ok(&["explain", "deployment.spec.replicas"]);
    assert!(explained.contains("replicas <integer>"), "{explained}");
    let explained = cloud.ok(&["explain", "pods.spec.containers.ports"]);
    assert!(explained.contains("containerPort"), "{explained}");
    // The four system namespaces exist from the start.
    let namespaces = cloud.ok(&["get", "namespaces", "-o", "name"]);
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            namespaces.contains(&format!("namespace/{name}")),
            "{namespaces}"
        );
    }
}

async fn namespaces_and_output_formats(cloud: &Cloud) {
    cloud.ok(&["create", "namespace", "team-a"]);
    let wide = cloud.ok(&["get", "namespace", "team-a", "-o", "wide"]);
    assert!(wide.contains("team-a") && wide.contains("Active"), "{wide}");
    let yaml = cloud.ok(&["get", "namespace", "team-a", "-o", "yaml"]);
    assert!(
        yaml.contains("name: team-a") && yaml.contains("uid:"),
        "{yaml}"
    );
    let phase = cloud.ok(&[
        "get",
        "namespace",
        "team-a",
        "-o",
        "jsonpath={.status.phase}",
    ]);
    assert_eq!(phase, "Active");
    // The namespace gets its default service account and root CA.
    cloud
        .eventually(
            &[
                "get",
                "serviceaccount",
                "default",
                "-n",
                "team-a",
                "-o",
                "name",
            ],
            |out| out.contains("serviceaccount/default"),
        )
        .await;
    cloud.ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "team-a",
        "--from-literal=a=1",
    ]);
    let json = cloud.ok(&["get", "configmap", "cfg", "-n", "team-a", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(json["data"]["a"], "1");
    let described = cloud.ok(&["describe", "namespace", "team-a"]);
    assert!(
        described.contains("Status:") && described.contains("Active"),
        "{described}"
    );

    // Deleting a namespace deletes what is in it, then the namespace.
    cloud.ok(&["delete", "namespace", "team-a", "--wait=false"]);
    cloud
        .eventually(&["get", "namespace", "team-a"], |out| {
            out.contains("NotFound")
        })
        .await;
    cloud.fails(&["get", "configmap", "cfg", "-n", "team-a"]);
}

async fn apply_edit_patch_label_annotate(cloud: &Cloud) {
    let manifest = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  mode: {value}\n  keep: \"yes\"\n"
        )
    };
    let file = cloud.dir().join("settings.yaml");
    std::fs::write(&file, manifest("one")).expect("manifest");
    let file = file.to_str().expect("UTF-8 path");
    assert!(cloud.ok(&["apply", "-f", file]).contains("created"));
    std::fs::write(cloud.dir().join("settings.yaml"), manifest("two")).expect("manifest");
    assert!(cloud.ok(&["apply", "-f", file]).contains("configured"));
    assert!(cloud.ok(&["apply", "-f", file]).contains("unchanged"));
    let mode = cloud.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]);
    assert_eq!(mode, "two");

    cloud.ok(&[
        "patch",
        "cm",
        "settings",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"mode":"three"}}"#,
    ]);
    cloud.ok(&[
        "patch",
        "cm",
        "settings",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/data/keep"}]"#,
    ]);
    cloud.ok(&["patch", "cm", "settings", "-p", r#"{"data":{"extra":"x"}}"#]);
    let data = cloud.ok(&["get", "cm", "settings", "-o", "jsonpath={.data}"]);
    let data: serde_json::Value = serde_json::from_str(&data).expect("data JSON");
    assert_eq!(data, serde_json::json!({"mode": "three", "extra": "x"}));

    cloud.ok(&["label", "cm", "settings", "tier=edge"]);
    cloud.ok(&["annotate", "cm", "settings", "owner=ops"]);
    let selected = cloud.ok(&["get", "cm", "-l", "tier=edge", "-o", "name"]);
    assert_eq!(selected.trim(), "configmap/settings");
    assert!(
        cloud
            .ok(&["get", "cm", "-l", "tier!=edge", "-o", "name"])
            .trim()
            .lines()
            .all(|l| l != "configmap/settings")
    );
    let owner = cloud.ok(&[
        "get",
        "cm",
        "settings",
        "-o",
        "jsonpath={.metadata.annotations.owner}",
    ]);
    assert_eq!(owner, "ops");

    // kubectl edit with a scripted editor.
    let editor = cloud.dir().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/mode: three/mode: edited/' \"$1\"\n",
    )
    .expect("editor");
    let made_executable = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    assert!(made_executable.success());
    let output = cloud
        .kubectl_command(&["edit", "cm", "settings"])
        .env("EDITOR", &editor)
        .output()
        .expect("kubectl edit");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        cloud.ok(&["get", "cm", "settings", "-o", "jsonpath={.data.mode}"]),
        "edited"
    );

    // Replace needs the current resourceVersion; a stale one conflicts.
    let live = cloud.ok(&["get", "cm", "settings", "-o", "json"]);
    let mut stale: serde_json::Value = serde_json::from_str(&live).expect("JSON");
    cloud.ok(&["label", "cm", "settings", "bump=1"]);
    stale["data"]["mode"] = serde_json::json!("stale");
    let stale_file = cloud.dir().join("stale.json");
    std::fs::write(&stale_file, stale.to_string()).expect("stale");
    let error = cloud.fails(&["replace", "-f", stale_file.to_str().expect("UTF-8")]);
    assert!(error.contains("the object has been modified"), "{error}");

    cloud.ok(&["delete", "cm", "settings"]);
    assert!(cloud.fails(&["get", "cm", "settings"]).contains("NotFound"));

    // Server-side apply: create, then change.
    for value in ["1", "2"] {
        let manifest = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: \"{value}\"\n"
        );
        assert!(
            cloud
                .ok_with_input(&["apply", "--server-side", "-f", "-"], &manifest)
                .contains("serverside-applied")
        );
    }
    assert_eq!(
        cloud.ok(&["get", "cm", "ssa", "-o", "jsonpath={.data.a}"]),
        "2"
    );
}

async fn deployments_scale_and_wait(cloud: &Cloud) {
    cloud.ok(&[
        "create",
        "deployment",
        "web",
        "--image=registry.local/web:1",
        "--replicas=1",
    ]);
    let wide = cloud.ok(&["get", "deployment", "web", "-o", "wide"]);
    assert!(
        wide.contains("web") && wide.contains("registry.local/web:1"),
        "{wide}"
    );
    cloud.ok(&["scale", "deployment", "web", "--replicas=3"]);
    assert_eq!(
        cloud.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
    let generation = cloud.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.metadata.generation}",
    ]);
    assert_eq!(generation, "2");
    cloud.ok(&[
        "wait",
        "--for=jsonpath={.spec.replicas}=3",
        "deployment/web",
        "--timeout=30s",
    ]);
    cloud.ok(&["set", "image", "deployment/web", "web=registry.local/web:2"]);
    let image = cloud.ok(&[
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "registry.local/web:2");
    cloud.ok(&["create", "job", "once", "--image=registry.local/job:1"]);
    cloud.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    let password = cloud.ok(&["get", "secret", "creds", "-o", "jsonpath={.data.password}"]);
    assert_eq!(password, "czNjcmV0");
}

async fn pods_watch_and_delete(cloud: &Cloud) {
    let mut watch = cloud
        .kubectl_command(&["get", "pods", "-w", "--output-watch-events"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl get -w");
    cloud.ok(&[
        "run",
        "probe",
        "--image=registry.local/busybox:1",
        "--restart=Never",
    ]);
    let pods = cloud.ok(&["get", "pods", "-o", "wide"]);
    assert!(pods.contains("probe") && pods.contains("Pending"), "{pods}");
    let pod = cloud.ok(&["get", "pod", "probe", "-o", "json"]);
    let pod: serde_json::Value = serde_json::from_str(&pod).expect("JSON");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(
        pod["spec"]["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    let described = cloud.ok(&["describe", "pod", "probe"]);
    assert!(
        described.contains("registry.local/busybox:1"),
        "{described}"
    );
    // Logs and exec need the stream tunnel to the edge: a clear Status error.
    let error = cloud.fails(&["logs", "probe"]);
    assert!(error.contains("not available"), "{error}");
    let error = cloud.fails(&["exec", "probe", "--", "true"]);
    assert!(error.contains("not available"), "{error}");
    cloud.ok(&["delete", "pod", "probe"]);
    // Read the watch as it prints, until the deletion shows or the deadline.
    let stdout = watch.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    let mut events = String::new();
    while !events.contains("DELETED") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                events.push_str(&line);
                events.push('\n');
            }
            Err(_) => break,
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        events.contains("ADDED") && events.contains("probe"),
        "{events}"
    );
    assert!(events.contains("DELETED"), "{events}");
}

async fn custom_resources(cloud: &Cloud) {
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1, default: 1}
              color: {type: string}
"#;
    cloud.ok_with_input(&["apply", "-f", "-"], crd);
    cloud.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ]);
    let widget =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {color: red}\n";
    cloud.ok_with_input(&["apply", "-f", "-"], widget);
    assert_eq!(
        cloud.ok(&["get", "wd", "w1", "-o", "jsonpath={.spec.size}"]),
        "1"
    );
    cloud.ok(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":3}}"#,
    ]);
    assert_eq!(
        cloud.ok(&["get", "widgets", "w1", "-o", "jsonpath={.spec.size}"]),
        "3"
    );
    let error = cloud.fails(&[
        "patch",
        "widget",
        "w1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":0}}"#,
    ]);
    assert!(error.contains("spec.size"), "{error}");
    cloud.ok(&["delete", "widget", "w1"]);
    cloud.ok(&["delete", "crd", "widgets.example.com"]);

    // Cluster scope, two served versions sharing one storage version, the
    // status subresource kept apart from the main resource, printer columns.
    let gadgets = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Cluster
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {level: {type: integer}}}}}}
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Level, type: integer, jsonPath: .spec.level}
    schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {level: {type: integer}}}, status: {type: object, properties: {ok: {type: boolean}}}}}}
"#;
    cloud.ok_with_input(&["apply", "-f", "-"], gadgets);
    cloud.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/gadgets.example.com",
        "--timeout=30s",
    ]);
    cloud.ok_with_input(
        &["apply", "-f", "-"],
        "apiVersion: example.com/v1beta1\nkind: Gadget\nmetadata: {name: g1}\nspec: {level: 3}\n",
    );
    let table = cloud.ok(&["get", "gadgets"]);
    assert!(table.contains("LEVEL") && table.contains('3'), "{table}");
    assert_eq!(
        cloud.ok(&["get", "gadget", "g1", "-o", "jsonpath={.apiVersion}"]),
        "example.com/v1"
    );
    assert_eq!(
        cloud.ok(&[
            "get",
            "gadgets.v1beta1.example.com",
            "g1",
            "-o",
            "jsonpath={.apiVersion} {.spec.level}"
        ]),
        "example.com/v1beta1 3"
    );
    cloud.ok(&[
        "patch",
        "gadget",
        "g1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"ok":true}}"#,
    ]);
    cloud.ok(&[
        "patch",
        "gadget",
        "g1",
        "--type=merge",
        "-p",
        r#"{"status":{"ok":false},"spec":{"level":4}}"#,
    ]);
    assert_eq!(
        cloud.ok(&[
            "get",
            "gadget",
            "g1",
            "-o",
            "jsonpath={.status.ok} {.spec.level}"
        ]),
        "true 4"
    );
    cloud.ok(&["delete", "crd", "gadgets.example.com"]);
    cloud
        .eventually(&["get", "crd", "widgets.example.com"], |out| {
            out.contains("NotFound")
        })
        .await;
}

async fn bad_input_is_refused_cleanly(cloud: &Cloud) {
    let error = cloud.fails(&["create", "configmap", "Bad_Name", "--from-literal=a=b"]);
    assert!(
        error.contains("Invalid value") || error.contains("invalid"),
        "{error}"
    );
    cloud.ok(&["create", "configmap", "dup", "--from-literal=a=b"]);
    let error = cloud.fails(&["create", "configmap", "dup", "--from-literal=a=b"]);
    assert!(
        error.contains("AlreadyExists") || error.contains("already exists"),
        "{error}"
    );
    let unknown = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: strict}\nbogus: 1\n";
    let output = cloud
        .kubectl_command(&["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(unknown.as_bytes())?;
            child.wait_with_output()
        })
        .expect("kubectl create");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && error.contains("unknown field"),
        "{error}"
    );
    assert!(
        cloud
            .fails(&["get", "configmap", "strict"])
            .contains("NotFound")
    );
    // A body over the 3 MiB limit is refused and nothing is stored.
    let big = cloud.dir().join("big.txt");
    std::fs::write(&big, "x".repeat(4 * 1024 * 1024)).expect("big file");
    let error = cloud.fails(&[
        "create",
        "configmap",
        "big",
        &format!("--from-file=big={}", big.display()),
    ]);
    assert!(
        error.to_lowercase().contains("too large") || error.contains("RequestEntityTooLarge"),
        "{error}"
    );
    assert!(
        cloud
            .fails(&["get", "configmap", "big"])
            .contains("NotFound")
    );
    assert!(
        cloud
            .fails(&["get", "widgets.nothing.example"])
            .contains("the server doesn't have a resource type")
    );
}

async fn cascading_deletion(cloud: &Cloud) {
    // One owner per propagation policy, each with one dependent.
    for (owner, cascade) in [
        ("bg", "background"),
        ("fg", "foreground"),
        ("orph", "orphan"),
    ] {
        cloud.ok(&["create", "configmap", owner, "--from-literal=a=b"]);
        let uid = cloud.ok(&["get", "cm", owner, "-o", "jsonpath={.metadata.uid}"]);
        let child = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {owner}-child\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: {owner}\n    uid: {uid}\n    blockOwnerDeletion: true\n"
        );
        cloud.ok_with_input(&["create", "-f", "-"], &child);
        cloud.ok(&[
            "delete",
            "cm",
            owner,
            &format!("--cascade={cascade}"),
            "--timeout=60s",
        ]);
        assert!(cloud.fails(&["get", "cm", owner]).contains("NotFound"));
    }
    for gone in ["bg-child", "fg-child"] {
        cloud
            .eventually(&["get", "cm", gone], |out| out.contains("NotFound"))
            .await;
    }
    let refs = cloud.ok(&[
        "get",
        "cm",
        "orph-child",
        "-o",
        "jsonpath={.metadata.ownerReferences}",
    ]);
    assert!(
        refs.trim().is_empty() || refs.trim() == "[]",
        "orphan kept its owner reference: {refs}"
    );
}

/// Objects, revisions and certificates survive a cloudcore restart on the
/// same data directory.
async fn state_survives_restart(etcd: bool) {
    let mut cloud = Cloud::start(Backend::start(etcd).await).await;
    cloud.ok(&["create", "configmap", "kept", "--from-literal=a=1"]);
    cloud.ok(&["create", "service", "clusterip", "kept", "--tcp=80:8080"]);
    let before = cloud.ok(&[
        "get",
        "cm",
        "kept",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let ip = cloud.ok(&["get", "svc", "kept", "-o", "jsonpath={.spec.clusterIP}"]);
    cloud.restart().await;
    assert_eq!(
        cloud.ok(&["get", "cm", "kept", "-o", "jsonpath={.data.a}"]),
        "1"
    );
    assert_eq!(
        cloud.ok(&["get", "svc", "kept", "-o", "jsonpath={.spec.clusterIP}"]),
        ip
    );
    cloud.ok(&["label", "cm", "kept", "again=yes"]);
    let after = cloud.ok(&[
        "get",
        "cm",
        "kept",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ]);
    let (before, after): (i64, i64) = (before.parse().expect("rv"), after.parse().expect("rv"));
    assert!(
        after > before,
        "revisions go on after a restart: {before} then {after}"
    );
    // A new service gets a different address than the one still held.
    cloud.ok(&["create", "service", "clusterip", "other", "--tcp=80:8080"]);
    assert_ne!(
        cloud.ok(&["get", "svc", "other", "-o", "jsonpath={.spec.clusterIP}"]),
        ip
    );
    cloud.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_on_sqlite() {
    state_survives_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restart_on_etcd() {
    state_survives_restart(true).await;
}

/// A node's identity (`system:node:<name>` in `system:nodes`) reaches its
/// own Node, its pods and what they reference, and nothing else, as
/// Kubernetes' node authorizer allows.
async fn nodes_are_held_to_their_own_objects(cloud: &Cloud) {
    for node in ["edge-1", "edge-2"] {
        cloud.ok_with_input(
            &["create", "-f", "-"],
            &format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n  labels: {{node-role.kubernetes.io/edge: \"\"}}\n"),
        );
    }
    cloud.ok(&["create", "secret", "generic", "used", "--from-literal=k=v"]);
    cloud.ok(&[
        "create",
        "secret",
        "generic",
        "unused",
        "--from-literal=k=v",
    ]);
    cloud.ok(&["create", "configmap", "settings", "--from-literal=k=v"]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: app}\nspec:\n  nodeName: edge-1\n  containers:\n  - name: app\n    image: registry.local/app:1\n    env:\n    - name: K\n      valueFrom: {secretKeyRef: {name: used, key: k}}\n  volumes:\n  - name: cfg\n    configMap: {name: settings}\n";
    cloud.ok_with_input(&["create", "-f", "-"], pod);

    // The node's own credentials, signed by the cluster CA.
    let data_dir = cloud.kubeconfig.parent().expect("data dir");
    let pki = kedge_apiserver::pki::Pki::load_or_create(
        data_dir,
        &kedge_apiserver::pki::ServingNames::for_bind([127, 0, 0, 1].into()),
    )
    .expect("cluster CA");
    let node = pki
        .sign_client(
            "system:node:edge-1",
            &["system:nodes"],
            std::time::Duration::from_secs(3600),
        )
        .expect("node certificate");
    // A kubeconfig like the admin's, with the node's credentials.
    let encode = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let admin = std::fs::read_to_string(&cloud.kubeconfig).expect("admin kubeconfig");
    let node_config: String = admin
        .lines()
        .map(|line| {
            if let Some((indent, _)) = line.split_once("client-certificate-data:") {
                format!(
                    "{indent}client-certificate-data: {}",
                    encode(&node.cert_pem)
                )
            } else if let Some((indent, _)) = line.split_once("client-key-data:") {
                format!("{indent}client-key-data: {}", encode(&node.key_pem))
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let node_kubeconfig = cloud.dir().join("node.kubeconfig");
    std::fs::write(&node_kubeconfig, node_config).expect("node kubeconfig");
    let kubeconfig_flag = format!("--kubeconfig={}", node_kubeconfig.display());
    let as_node = |args: &[&str]| -> Vec<String> {
        let mut all = vec![kubeconfig_flag.clone()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    };
    let run = |args: &[&str]| {
        let args = as_node(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cloud.kubectl(&args)
    };

    let own = run(&["get", "node", "edge-1"]);
    assert!(own.status.success(), "{own:?}");
    let denied = run(&["get", "node", "edge-2"]);
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .to_lowercase()
            .contains("forbidden"),
        "{denied:?}"
    );
    assert!(run(&["get", "pod", "app"]).status.success());
    // What the pod references becomes readable once the authorizer's graph
    // has seen the pod.
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while !run(&["get", "secret", "used"]).status.success() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never got its pod's secret"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(run(&["get", "configmap", "settings"]).status.success());
    let denied = run(&["get", "secret", "unused"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .to_lowercase()
            .contains("forbidden"),
        "{denied:?}"
    );
    let denied = run(&["create", "configmap", "mine", "--from-literal=a=b"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .to_lowercase()
            .contains("forbidden"),
        "{denied:?}"
    );
    let denied = run(&["delete", "node", "edge-2"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr)
            .to_lowercase()
            .contains("forbidden"),
        "{denied:?}"
    );
}

/// The scheduler binds pending pods to fitting nodes, reports the ones that
/// fit nowhere, and binds them when a node that fits appears.
async fn pods_are_scheduled(cloud: &Cloud) {
    let node = |name: &str, zone: &str, cpu: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{zone: \"{zone}\"}}\nstatus:\n  allocatable: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"10\"}}\n  capacity: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"10\"}}\n"
        )
    };
    cloud.ok_with_input(&["create", "-f", "-"], &node("node-a", "x", "1"));
    cloud.ok_with_input(&["create", "-f", "-"], &node("node-b", "y", "2"));
    let pod = |name: &str, cpu: &str, selector: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeSelector: {{{selector}}}\n  containers:\n  - name: c\n    image: registry.local/app:1\n    resources: {{requests: {{cpu: \"{cpu}\"}}}}\n"
        )
    };
    cloud.ok_with_input(&["create", "-f", "-"], &pod("in-x", "500m", "zone: \"x\""));
    cloud
        .eventually(
            &["get", "pod", "in-x", "-o", "jsonpath={.spec.nodeName}"],
            |out| out == "node-a",
        )
        .await;
    cloud.ok_with_input(&["create", "-f", "-"], &pod("too-big", "8", ""));
    cloud
        .eventually(
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=too-big,reason=FailedScheduling",
                "-o",
                "jsonpath={.items[*].message}",
            ],
            |out| out.contains("0/2 nodes are available") && out.contains("Insufficient cpu"),
        )
        .await;
    assert_eq!(
        cloud.ok(&["get", "pod", "too-big", "-o", "jsonpath={.spec.nodeName}"]),
        ""
    );
    cloud.ok_with_input(&["create", "-f", "-"], &node("node-big", "z", "16"));
    cloud
        .eventually(
            &["get", "pod", "too-big", "-o", "jsonpath={.spec.nodeName}"],
            |out| out == "node-big",
        )
        .await;
}
