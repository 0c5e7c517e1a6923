#!/usr/bin/env bash
# Many flows and many peers on a podguard lab (real agents, userspace
# device, embedded API server), as issue 22 asks:
#   1. fairness: 3 nodes, node-1's pod sends one TCP stream to node-2's pod
#      and one to node-3's pod at the same time: per-peer Gbit/s and the
#      ratio of the slower to the faster (1.0 = fair; no peer starved);
#   2. many pods: 2 nodes x 8 pods, the 8 pod pairs across the nodes send
#      at once: the aggregate next to one stream alone on the same lab.
#   bench/mesh-load.sh [SECONDS]   (root; default 10 s per measurement)
# Refuses to run while another lab is up (the lab is one per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/mesh-load.sh: run as root (network namespaces)" >&2; exit 1; }
SECS=${1:-10}
command -v iperf3 >/dev/null || { echo "bench/mesh-load.sh: iperf3 missing: apt-get install -y iperf3" >&2; exit 1; }
cargo build --release --locked --bins -p podguard >&2
P=./target/release/podguard
STATE=/run/podguard-lab/state.json

# "netns ip" of every pod of node N (1-based), from the lab's state file.
pods_of() {
  python3 - "$STATE" "$1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
for p in s["pods"]:
    if p["node"] == "node-" + sys.argv[2]:
        print(p["netns"], p["ips"][0])
EOF
}

# Start an iperf3 server in pod namespace $1 (port $2).
server() { ip netns exec "$1" iperf3 -s -D -p "$2" >/dev/null; }

# One client in pod namespace $1 to $2:$3 for SECS, JSON into file $4.
client() { ip netns exec "$1" iperf3 -J -c "$2" -p "$3" -t "$SECS" >"$4" 2>&1 || true; }

gbps() {
  python3 - "$@" <<'EOF'
import json, sys
for f in sys.argv[1:]:
    try:
        print("%.2f" % (json.load(open(f))["end"]["sum_received"]["bits_per_second"] / 1e9))
    except Exception as e:
        print("nan")
EOF
}

out=$(mktemp -d)
trap '$P lab down >/dev/null 2>&1 || true; rm -rf "$out"' EXIT

echo "== fairness: 3 nodes, node-1 sends to node-2 and node-3 at once (${SECS} s)" >&2
$P lab up --nodes 3 --pods-per-node 1 --ipv4-only >&2
read -r a _ < <(pods_of 1)
read -r b ipb < <(pods_of 2)
read -r c ipc < <(pods_of 3)
server "$b" 5201; server "$c" 5201
sleep 0.5
client "$a" "$ipb" 5201 "$out/alone.json"
client "$a" "$ipb" 5201 "$out/f2.json" & client "$a" "$ipc" 5201 "$out/f3.json" & wait
read -r alone < <(gbps "$out/alone.json")
mapfile -t f < <(gbps "$out/f2.json" "$out/f3.json")
python3 - "$alone" "${f[0]}" "${f[1]}" <<'EOF'
import sys
alone, x, y = map(float, sys.argv[1:])
print(f"fairness: one stream alone {alone:.2f} Gbit/s; to node-2 {x:.2f} and to node-3 {y:.2f} at once "
      f"(sum {x + y:.2f}, slower/faster {min(x, y) / max(x, y):.2f})")
EOF
$P lab down >&2

echo "== many pods: 2 nodes x 8 pods, 8 pairs across the nodes at once (${SECS} s)" >&2
$P lab up --nodes 2 --pods-per-node 8 --ipv4-only >&2
mapfile -t left < <(pods_of 1)
mapfile -t right < <(pods_of 2)
for i in $(seq 0 7); do
  read -r ns _ <<<"${right[$i]}"
  server "$ns" $((5201 + i))
done
sleep 0.5
read -r a0 _ <<<"${left[0]}"; read -r _ ip0 <<<"${right[0]}"
client "$a0" "$ip0" 5201 "$out/one.json"
for i in $(seq 0 7); do
  read -r ns _ <<<"${left[$i]}"; read -r _ ip <<<"${right[$i]}"
  client "$ns" "$ip" $((5201 + i)) "$out/p$i.json" &
done
wait
read -r one < <(gbps "$out/one.json")
mapfile -t each < <(gbps "$out"/p?.json)
python3 - "$one" "${each[@]}" <<'EOF'
import sys
one, *each = map(float, sys.argv[1:])
print(f"many pods: one pair alone {one:.2f} Gbit/s; 8 pairs at once {sum(each):.2f} in all "
      f"({sum(each) / one:.2f}x one pair; per pair min {min(each):.2f}, max {max(each):.2f})")
EOF
