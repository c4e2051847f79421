#!/usr/bin/env bash
# The main job: builds Kedge, starts a cloudcore (with its embedded
# Kubernetes-compatible control plane) and an edgecore on this host from
# their default configurations, shows that both are healthy and uses the
# control plane with the real kubectl.
# Everything runs on 127.0.0.1 and under a temporary directory; both processes
# are stopped cleanly (SIGTERM) at the end.
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
  rm -rf "$work"
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

cloud_monitor="127.0.0.1:$(free_port)"
edge_monitor="127.0.0.1:$(free_port)"
api_port="$(free_port)"

# The default configurations, with the monitor servers and the API server on
# free ports and the control plane's data under the temporary directory.
"$bin/cloudcore" --defaultconfig \
  | sed -e "s|bindAddress: 127.0.0.1:9091|bindAddress: $cloud_monitor|" \
        -e "s|securePort: 6443|securePort: $api_port|" \
        -e "s|dataDir: /var/lib/kubeedge/controlplane|dataDir: $work/controlplane|" >"$work/cloudcore.yaml"
grep -q "securePort: $api_port" "$work/cloudcore.yaml"
"$bin/edgecore" --defaultconfig \
  | sed "s|bindAddress: 127.0.0.1:10352|bindAddress: $edge_monitor|" >"$work/edgecore.yaml"
grep -q "$cloud_monitor" "$work/cloudcore.yaml"
grep -q "$edge_monitor" "$work/edgecore.yaml"

echo "== starting cloudcore (monitor on $cloud_monitor)"
"$bin/cloudcore" --config "$work/cloudcore.yaml" 2>"$work/cloudcore.log" &
pids+=($!)
echo "== starting edgecore (monitor on $edge_monitor)"
"$bin/edgecore" --config "$work/edgecore.yaml" 2>"$work/edgecore.log" &
pids+=($!)

for monitor in "$cloud_monitor" "$edge_monitor"; do
  wait_ok "$monitor" /readyz
  echo "-- $monitor /readyz: $(curl -fsS "http://$monitor/readyz")"
  echo "-- $monitor bus metrics:"
  curl -fsS "http://$monitor/metrics" | grep '^kedge_bus_inbox_depth' | sed 's/^/   /'
done

export KUBECONFIG="$work/controlplane/admin.kubeconfig"
echo "== the embedded control plane, through kubectl ($KUBECONFIG)"
kubectl version
kubectl get namespaces
kubectl create deployment web --image=registry.local/web:1 --replicas=2
kubectl create configmap settings --from-literal=mode=edge
kubectl get deployments,configmaps -o wide

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
echo "== demo finished: both components started and reported ready, the control plane served kubectl, both stopped cleanly"
