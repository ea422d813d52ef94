#!/usr/bin/env bash
# Runs every test of ironcd on a fresh machine: installs what the tests need
# when it is missing (Debian's etcd-server and etcd-client for etcdctl and the
# differential tests, protobuf-compiler and libprotobuf-dev, curl), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# etcd-client's build imports protobuf's well-known types, which Debian ships
# apart from protoc (a Recommends that --no-install-recommends skips).
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# A clean build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL=0
echo "== disk: $(df -h . | awk 'NR==2 {print $4 " free of " $2}')"

echo "== building benches (compile check only; run them with cargo bench)"
cargo check -q --workspace --benches

echo "== cargo test --workspace"
cargo test --workspace
