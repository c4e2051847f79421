#!/usr/bin/env bash
# The main job: builds Kedge, starts a private containerd (installed with
# apt-get, its pause and busybox images built offline), a cloudcore (with its
# embedded Kubernetes-compatible control plane) and an edgecore joined to it
# with a token, runs a pod on the edge node with the real kubectl and prints
# `kubectl get pods -o wide`.
# Everything runs on 127.0.0.1 and under a temporary directory; the pod is
# deleted, both processes are stopped cleanly (SIGTERM) and containerd is
# stopped at the end. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "== building"
cargo build --release --locked --bins
bin=target/release

work="$(mktemp -d -t kedge-demo.XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  scripts/containerd.sh stop "$work/cri" >/dev/null 2>&1 || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

# Picks a free port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 30 s for http://$1$2 to answer 200.
wait_ok() {
  local url="http://$1$2"
  for _ in $(seq 300); do
    if curl -fsS "$url" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "demo: $url did not answer 200 within 30 s" >&2
  return 1
}

# Sets fields of the YAML file $1: each further argument is PATH=VALUE, PATH
# dotted, VALUE in YAML.
set_fields() {
  python3 - "$@" <<'PY'
import sys, yaml
path, edits = sys.argv[1], sys.argv[2:]
with open(path) as f:
    doc = yaml.safe_load(f)
for edit in edits:
    keys, value = edit.split("=", 1)
    node = doc
    *parents, last = keys.split(".")
    for key in parents:
        node = node[key]
    if last not in node:
        sys.exit(f"demo: {path} has no field {keys}")
    node[last] = yaml.safe_load(value)
with open(path, "w") as f:
    yaml.safe_dump(doc, f, sort_keys=False)
PY
}

echo "== starting a private containerd"
cri_sock=$(scripts/containerd.sh start "$work/cri")

cloud_monitor="127.0.0.1:$(free_port)"
edge_monitor="127.0.0.1:$(free_port)"
api_port="$(free_port)"

hub_ws="$(free_port)"
hub_https="$(free_port)"
hub_quic="$(free_port)"
node=kedge-demo-edge

# The default configurations, with every listener on a free loopback port and
# every file under the temporary directory.
"$bin/cloudcore" --defaultconfig >"$work/cloudcore.yaml"
set_fields "$work/cloudcore.yaml" \
  "commonConfig.monitorServer.bindAddress=$cloud_monitor" \
  "controlPlane.securePort=$api_port" \
  "controlPlane.dataDir=$work/controlplane" \
  "modules.cloudHub.advertiseAddress=[127.0.0.1]" \
  "modules.cloudHub.websocket.address=127.0.0.1" \
  "modules.cloudHub.websocket.port=$hub_ws" \
  "modules.cloudHub.https.address=127.0.0.1" \
  "modules.cloudHub.https.port=$hub_https" \
  "modules.cloudHub.quic.address=127.0.0.1" \
  "modules.cloudHub.quic.port=$hub_quic" \
  "modules.cloudHub.unixsocket.enable=false"

echo "== starting cloudcore (monitor on $cloud_monitor)"
"$bin/cloudcore" --config "$work/cloudcore.yaml" 2>"$work/cloudcore.log" &
pids+=($!)
wait_ok "$cloud_monitor" /readyz
export KUBECONFIG="$work/controlplane/admin.kubeconfig"
token=$("$bin/keadm" gettoken --kube-config "$KUBECONFIG")

"$bin/edgecore" --defaultconfig >"$work/edgecore.yaml"
set_fields "$work/edgecore.yaml" \
  "monitorServer.bindAddress=$edge_monitor" \
  "database.dataSource=$work/edge/edgecore.db" \
  "modules.edgeHub.token=$token" \
  "modules.edgeHub.httpServer=https://127.0.0.1:$hub_https" \
  "modules.edgeHub.websocket.server=127.0.0.1:$hub_ws" \
  "modules.edgeHub.tlsCaFile=$work/edge/ca/rootCA.crt" \
  "modules.edgeHub.tlsCertFile=$work/edge/certs/server.crt" \
  "modules.edgeHub.tlsPrivateKeyFile=$work/edge/certs/server.key" \
  "modules.eventBus.mqttServerInternal=tcp://127.0.0.1:$(free_port)" \
  "modules.deviceTwin.dmiSockPath=$work/edge/dmi.sock" \
  "modules.metaManager.metaServer.enable=true" \
  "modules.metaManager.metaServer.server=127.0.0.1:$(free_port)" \
  "modules.edged.hostnameOverride=$node" \
  "modules.edged.nodeIP=127.0.0.1" \
  "modules.edged.rootDirectory=$work/edge/edged" \
  "modules.edged.remoteRuntimeEndpoint=unix://$cri_sock" \
  "modules.edged.remoteImageEndpoint=unix://$cri_sock"
mkdir -p "$work/edge"

echo "== starting edgecore (monitor on $edge_monitor), node $node"
"$bin/edgecore" --config "$work/edgecore.yaml" 2>"$work/edgecore.log" &
pids+=($!)
wait_ok "$edge_monitor" /readyz

echo "== the embedded control plane, through kubectl ($KUBECONFIG)"
kubectl version
for _ in $(seq 300); do
  kubectl get "node/$node" >/dev/null 2>&1 && break
  sleep 0.2
done
kubectl wait --for=condition=Ready "node/$node" --timeout=60s
kubectl get nodes -o wide

echo "== a pod on the edge node"
kubectl apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: hello-edge
spec:
  nodeName: $node
  containers:
  - name: hello
    image: localhost/kedge/busybox:1
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo hello from the edge; exec sleep 3600"]
YAML
kubectl wait --for=condition=Ready pod/hello-edge --timeout=60s
kubectl get pods -o wide
kubectl delete pod hello-edge --timeout=60s

echo "== stopping both (SIGTERM)"
for pid in "${pids[@]}"; do
  kill -TERM "$pid"
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
pids=()
tail -n 3 "$work/cloudcore.log" "$work/edgecore.log"
if ((status != 0)); then
  echo "demo: a component did not stop cleanly (exit $status)" >&2
  exit "$status"
fi
echo "== demo finished: a pod ran on the edge node (containerd), was deleted, and both components stopped cleanly"
