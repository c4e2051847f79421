#!/usr/bin/env bash
# Installs, with apt-get, everything Kedge's build, tests and demo need on a
# fresh Debian machine. Safe to run again: it installs only what is missing.
set -euo pipefail

packages=(
  build-essential      # cc for crates that build C (SQLite)
  pkg-config
  protobuf-compiler    # protoc, for the gRPC code of etcd-client and DMI
  libprotobuf-dev      # the well-known .proto files protoc imports
  etcd-server          # the etcd storage backend's tests start a real etcd
  python3
  python3-kubernetes   # the official Python client, in the API compatibility tests
  curl
  iproute2             # ip netns and veth for network fault tests
  nftables             # packet loss and cuts inside those namespaces
  mosquitto            # the MQTT broker EventBus uses in the device tests
  mosquitto-clients    # mosquitto_pub and mosquitto_sub drive those tests
  python3-pymodbus     # the Modbus TCP device of the mapper tests (pymodbus)
  python3-serial-asyncio  # which pymodbus imports even for TCP (with pyserial)
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
# kubectl: any recent one on PATH will do; otherwise Debian's.
if ! command -v kubectl >/dev/null 2>&1; then
  missing+=(kubernetes-client)
fi

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi

# edged's CRI tests: containerd, runc, CNI plugins and what the offline images
# are built from.
"$(dirname "$0")/containerd.sh" install

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not on PATH; install the stable Rust toolchain (rustup) first" >&2
  exit 1
fi
