#!/usr/bin/env bash
# One command for the whole side-by-side table on a fresh Debian 12 machine
# (as root): installs the contenders and tools that are missing, builds
# podguard, runs `podguard-bench throughput`, and writes bench/results/.
# Arguments go to `podguard-bench throughput` (e.g. --duration 10 --reps 5).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/run.sh: run as root (network namespaces)" >&2; exit 1; }
need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v ping >/dev/null || need+=(iputils-ping)
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
if ((${#need[@]})); then
  echo "bench/run.sh: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v boringtun-cli >/dev/null; then
  echo "bench/run.sh: cargo install boringtun-cli 0.7.1 (a few minutes)" >&2
  cargo install --locked boringtun-cli --version 0.7.1
  export PATH="$HOME/.cargo/bin:$PATH"
fi
for suite in trixie sid; do
  [ -x "target/bench-tools/wireguard-go-$suite" ] || bench/fetch-wireguard-go.sh "$suite" >&2
done
cargo build --release --locked --bins -p podguard -p podguard-bench
exec ./target/release/podguard-bench throughput "$@"
