#!/usr/bin/env bash
# A private containerd for edged's CRI tests, with offline-built images.
#
#   containerd.sh install     apt packages: containerd, runc, CNI plugins, iptables,
#                             busybox-static, gcc (for the pause binary)
#   containerd.sh images DIR  build DIR/images/{pause,busybox}.tar (OCI layouts)
#   containerd.sh start DIR   config, CNI conflist and a containerd of its own under DIR,
#                             images imported into namespace k8s.io; prints the socket
#   containerd.sh stop DIR    kill every container, containerd and its shims, unmount,
#                             delete the CNI bridge, its NAT rules and the tests' cgroups
#
# Everything lives under DIR (root, state, runc root, netns mounts, CNI IPAM, log): it
# never touches a system containerd. Nothing needs the network: the images come from
# Debian's busybox-static and a pause binary compiled here. Run as root. Every
# subcommand is safe to run again.
set -euo pipefail

readonly PAUSE_IMAGE="localhost/kedge/pause:3.9"
readonly BUSYBOX_IMAGE="localhost/kedge/busybox:1"
readonly CNI_BIN_DIR="/usr/lib/cni"
readonly START_TIMEOUT=60

log() { echo "containerd.sh: $*" >&2; }
die() {
  log "$*"
  exit 1
}

need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root"; }

# The absolute form of the DIR argument.
work_dir() {
  [[ $# -ge 1 && -n $1 ]] || die "usage: containerd.sh ${FUNCNAME[1]#cmd_} DIR"
  mkdir -p "$1"
  (cd "$1" && pwd -P)
}

# === install ===

cmd_install() {
  need_root install
  local packages=(containerd runc containernetworking-plugins iptables busybox-static gcc libc6-dev)
  local missing=() package
  for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$package")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "install: all packages present"
    return
  fi
  log "install: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # The Debian package may start the system containerd; ours never uses it.
}

# === images ===

# The OCI name of this machine's architecture.
oci_arch() {
  case "$(dpkg --print-architecture)" in
  amd64) echo amd64 ;;
  arm64) echo arm64 ;;
  armhf | armel) echo arm ;;
  i386) echo 386 ;;
  ppc64el) echo ppc64le ;;
  s390x) echo s390x ;;
  riscv64) echo riscv64 ;;
  *) die "unknown architecture $(dpkg --print-architecture)" ;;
  esac
}

# Writes blob FILE into LAYOUT/blobs/sha256 and prints "DIGEST SIZE".
add_blob() {
  local layout=$1 file=$2 hex size
  hex=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mv "$file" "$layout/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# make_image ROOTFS REF ENTRYPOINT_JSON CMD_JSON OUT_TAR: a one-layer OCI image
# layout tarball of ROOTFS, named REF for `ctr images import`. Reproducible: fixed
# mtimes and owners, sorted entries, gzip without a name or time.
make_image() {
  local rootfs=$1 ref=$2 entrypoint=$3 cmd=$4 out=$5
  local build
  build=$(mktemp -d "${out%/*}/build.XXXXXX")
  local layout=$build/layout
  mkdir -p "$layout/blobs/sha256"

  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$rootfs" -cf "$build/layer.tar" .
  local diff_id
  diff_id=sha256:$(sha256sum "$build/layer.tar" | cut -d' ' -f1)
  gzip -n -9 "$build/layer.tar"
  local layer layer_digest layer_size
  layer=$(add_blob "$layout" "$build/layer.tar.gz")
  layer_digest=${layer% *}
  layer_size=${layer#* }

  cat >"$build/config.json" <<EOF
{"architecture":"$(oci_arch)","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":$entrypoint,"Cmd":$cmd,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/containerd.sh images"}]}
EOF
  local config config_digest config_size
  config=$(add_blob "$layout" "$build/config.json")
  config_digest=${config% *}
  config_size=${config#* }

  cat >"$build/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"$layer_digest","size":$layer_size}]}
EOF
  local manifest manifest_digest manifest_size
  manifest=$(add_blob "$layout" "$build/manifest.json")
  manifest_digest=${manifest% *}
  manifest_size=${manifest#* }

  cat >"$layout/index.json" <<EOF
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$manifest_digest","size":$manifest_size,"annotations":{"io.containerd.image.name":"$ref","org.opencontainers.image.ref.name":"$ref"}}]}
EOF
  echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    -C "$layout" -cf "$build/image.tar" oci-layout index.json blobs
  mv "$build/image.tar" "$out"
  rm -rf "$build"
}

# The pause process: PID 1 of every pod sandbox. It reaps orphans and exits 0 on
# SIGTERM or SIGINT (a PID 1 without handlers would ignore both).
write_pause_c() {
  cat >"$1" <<'EOF'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; _exit(0); }

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, 0, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {0}, child = {0};
  stop.sa_handler = on_stop;
  child.sa_handler = on_child;
  child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  if (sigaction(SIGTERM, &stop, 0) || sigaction(SIGINT, &stop, 0) ||
      sigaction(SIGCHLD, &child, 0))
    return 1;
  for (;;)
    pause();
}
EOF
}

cmd_images() {
  local dir
  dir=$(work_dir "$@")
  local out=$dir/images
  mkdir -p "$out"
  if [[ -s $out/pause.tar && -s $out/busybox.tar ]]; then
    log "images: present in $out"
    return
  fi
  command -v gcc >/dev/null || die "images: gcc is missing (containerd.sh install)"
  [[ -x /bin/busybox ]] || die "images: /bin/busybox is missing (containerd.sh install)"
  local build
  build=$(mktemp -d "$out/rootfs.XXXXXX")

  # pause: one static binary.
  mkdir -p "$build/pause"
  write_pause_c "$build/pause.c"
  gcc -Os -static -s -o "$build/pause/pause" "$build/pause.c"
  make_image "$build/pause" "$PAUSE_IMAGE" '["/pause"]' 'null' "$out/pause.tar"

  # busybox: /bin/busybox, a link per applet, and the usual small /etc.
  local root=$build/busybox applet
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  make_image "$root" "$BUSYBOX_IMAGE" 'null' '["sh"]' "$out/busybox.tar"

  rm -rf "$build"
  log "images: built $out/pause.tar ($PAUSE_IMAGE) and $out/busybox.tar ($BUSYBOX_IMAGE)"
}

# === start ===

ip_to_int() {
  local IFS=.
  # shellcheck disable=SC2206
  local octets=($1)
  echo $(((octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]))
}

# overlaps A/LEN B/LEN: whether the two IPv4 prefixes share any address.
overlaps() {
  local a=${1%/*} alen=${1#*/} b=${2%/*} blen=${2#*/}
  [[ $1 == */* ]] || alen=32
  [[ $2 == */* ]] || blen=32
  local len=$((alen < blen ? alen : blen))
  local mask=$(((0xffffffff << (32 - len)) & 0xffffffff))
  (($(($(ip_to_int "$a") & mask)) == $(($(ip_to_int "$b") & mask))))
}

# A /16 in 10.64.0.0/10 that no route of this machine touches, except our own
# bridge's (a restarted instance keeps its subnet). The search starts at a place
# given by DIR, so that two instances started at once (whose bridges have no route
# before their first pod) do not pick the same one.
pick_subnet() {
  local dir=$1 bridge=$2 start i candidate destination device taken routes
  routes=$(ip -4 route show table all | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print ($1 == "local" || $1 == "broadcast" ? $2 : $1), $(i + 1); next } }')
  start=$((16#$(printf '%s' "$dir" | sha256sum | cut -c1-4) % 64))
  for ((i = 0; i < 64; i++)); do
    candidate=10.$((64 + (start + i) % 64)).0.0/16
    taken=0
    while read -r destination device; do
      [[ $destination =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(/[0-9]+)?$ ]] || continue
      [[ $device == "$bridge" ]] && continue
      if overlaps "$candidate" "$destination"; then
        taken=1
        break
      fi
    done <<<"$routes"
    if ((taken == 0)); then
      echo "$candidate"
      return
    fi
  done
  die "start: every candidate pod subnet collides with a route of this machine"
}

# A bridge name of our own per DIR (at most 15 characters), so two instances never
# share one.
bridge_name() { echo "kcni$(printf '%s' "$1" | sha256sum | cut -c1-8)"; }

sock_of() { echo "$1/containerd.sock"; }

# Whether a containerd answers on DIR's socket (without ctr's 10 s connect wait when
# there is no socket at all).
alive() {
  local sock
  sock=$(sock_of "$1")
  [[ -S $sock ]] && ctr --connect-timeout 2s -a "$sock" version >/dev/null 2>&1
}

write_config() {
  local dir=$1 bridge=$2 subnet=$3
  mkdir -p "$dir/root" "$dir/state" "$dir/runc" "$dir/cni/net.d" "$dir/cni/ipam" "$dir/opt"
  cat >"$dir/config.toml" <<EOF
# A private containerd for Kedge's tests, written by scripts/containerd.sh.
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which containers and some CI
  # machines lack: clamp to containerd's own score instead of failing every sandbox.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
EOF
  cat >"$dir/cni/net.d/10-kedge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kedge-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$subnet" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$dir/cni/ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
  echo "$subnet" >"$dir/subnet"
}

cmd_start() {
  need_root start
  local dir
  dir=$(work_dir "$@")
  local sock
  sock=$(sock_of "$dir")
  ((${#sock} < 100)) || die "start: socket path $sock is too long for a unix socket"
  for tool in containerd ctr runc ip iptables; do
    command -v "$tool" >/dev/null || die "start: $tool is missing (containerd.sh install)"
  done
  [[ -x $CNI_BIN_DIR/bridge ]] || die "start: CNI plugins missing in $CNI_BIN_DIR"

  if alive "$dir"; then
    log "start: already running"
    echo "$sock"
    return
  fi
  cmd_images "$dir"

  local bridge subnet
  bridge=$(bridge_name "$dir")
  subnet=$(pick_subnet "$dir" "$bridge")
  write_config "$dir" "$bridge" "$subnet"
  rm -f "$sock" "$sock.ttrpc"

  # Its own session, so that a terminal's signals or the caller's exit leave it to
  # `stop`.
  setsid containerd --config "$dir/config.toml" >>"$dir/containerd.log" 2>&1 </dev/null &
  echo $! >"$dir/containerd.pid"

  local deadline=$((SECONDS + START_TIMEOUT))
  until alive "$dir"; do
    if ! kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null; then
      tail -n 30 "$dir/containerd.log" >&2 || true
      die "start: containerd exited; its log is $dir/containerd.log"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$dir/containerd.log" >&2 || true
      die "start: containerd did not answer on $sock within ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done

  local image
  for image in pause busybox; do
    ctr -a "$sock" -n k8s.io images import --no-unpack=false "$dir/images/$image.tar" >/dev/null
  done
  ctr -a "$sock" -n k8s.io images ls -q | grep -qx "$PAUSE_IMAGE" || die "start: $PAUSE_IMAGE not imported"
  ctr -a "$sock" -n k8s.io images ls -q | grep -qx "$BUSYBOX_IMAGE" || die "start: $BUSYBOX_IMAGE not imported"
  log "start: containerd $(cat "$dir/containerd.pid") on $sock, pod subnet $subnet on bridge $bridge"
  echo "$sock"
}

# === stop ===

# Waits up to $2 seconds for process $1 to end.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

cmd_stop() {
  need_root stop
  local dir
  dir=$(work_dir "$@")
  [[ -f $dir/config.toml ]] || {
    log "stop: nothing started in $dir"
    return
  }

  # 1. Every container, pause ones included, killed and deleted through runc: the
  #    shims hold only the containers' stdio and exit once their task is gone.
  local runc_root=$dir/runc/k8s.io id
  if [[ -d $runc_root ]]; then
    for id in $(runc --root "$runc_root" list -q 2>/dev/null); do
      runc --root "$runc_root" delete --force "$id" >/dev/null 2>&1 || log "stop: runc delete $id failed"
    done
  fi

  # 2. containerd: TERM, then KILL.
  local pid
  if [[ -f $dir/containerd.pid ]]; then
    pid=$(cat "$dir/containerd.pid")
    if kill -0 "$pid" 2>/dev/null && grep -q containerd "/proc/$pid/comm" 2>/dev/null; then
      kill -TERM "$pid" || true
      wait_gone "$pid" 20 || {
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || log "stop: containerd $pid does not die"
      }
    fi
    rm -f "$dir/containerd.pid"
  fi

  # 3. Shims left behind, by the pid files in their bundles.
  local file
  while IFS= read -r -d '' file; do
    pid=$(cat "$file" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || continue
    if grep -q containerd-shim "/proc/$pid/comm" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 10 || log "stop: shim $pid does not die"
    fi
  done < <(find "$dir/state" -name shim.pid -print0 2>/dev/null)

  # 4. Mounts under DIR (rootfs overlays, shm, network namespaces), deepest first.
  local mount
  while read -r mount; do
    umount -l "$mount" 2>/dev/null || log "stop: cannot unmount $mount"
  done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)

  # 5. The bridge and the NAT rules its pods' ipMasq left (when a sandbox was not
  #    stopped through CRI).
  local bridge
  bridge=$(bridge_name "$dir")
  if ip link show "$bridge" >/dev/null 2>&1; then
    ip link del "$bridge" || log "stop: cannot delete bridge $bridge"
  fi
  if [[ -f $dir/subnet ]] && command -v iptables >/dev/null; then
    local subnet rule source chain
    subnet=$(cat "$dir/subnet")
    while read -r rule; do
      source=$(sed -n 's/^-A POSTROUTING -s \([0-9.]*\/32\) .*/\1/p' <<<"$rule")
      chain=$(sed -n 's/.* -j \(CNI-[0-9a-f]*\)$/\1/p' <<<"$rule")
      [[ -n $source && -n $chain ]] && overlaps "$subnet" "$source" || continue
      # iptables -S quotes its output for the shell (the comment holds quotes).
      eval "iptables -t nat ${rule/#-A/-D}" || log "stop: cannot delete NAT rule: $rule"
      iptables -t nat -F "$chain" 2>/dev/null || true
      iptables -t nat -X "$chain" 2>/dev/null || true
    done < <(iptables -t nat -S POSTROUTING 2>/dev/null || true)
  fi

  # 6. The cgroups under kedge-test/ that Kedge's CRI tests use as pod cgroup parent
  #    and that a killed test left (runc removes only a container's own cgroup).
  #    rmdir removes only cgroups without processes.
  local cgroup
  while read -r cgroup; do
    rmdir "$cgroup" 2>/dev/null || true
  done < <(find /sys/fs/cgroup -maxdepth 4 -type d -path '*/kedge-test*' 2>/dev/null | sort -r)

  # 7. Leave the images and the log; the rest starts afresh next time.
  if awk -v d="$dir/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    log "stop: mounts remain under $dir; keeping its state"
  else
    rm -rf "$dir/root" "$dir/state" "$dir/runc" "$dir/cni/ipam" "$dir/opt"
  fi
  rm -f "$dir/containerd.sock" "$dir/containerd.sock.ttrpc"
  log "stop: stopped"
}

main() {
  local command=${1:-}
  shift || true
  case "$command" in
  install) cmd_install "$@" ;;
  images) cmd_images "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  *) die "usage: containerd.sh install | images DIR | start DIR | stop DIR" ;;
  esac
}

main "$@"
