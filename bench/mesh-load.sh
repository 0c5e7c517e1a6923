#!/usr/bin/env bash
# Many flows and many peers on a podguard lab (real agents, userspace
# device, embedded API server), as issue 22 asks:
#   1. fairness: 3 nodes, node-1's pod sends one TCP stream to node-2's pod
#      and one to node-3's pod at the same time: per-peer Gbit/s and the
#      ratio of the slower to the faster (1.0 = fair; no peer starved);
#   2. many pods: 2 nodes x 8 pods, the 8 pod pairs across the nodes send
#      at once: the aggregate next to one stream alone on the same lab.
#   bench/mesh-load.sh [SECONDS] [REPS]   (root; default 10 s per
#   measurement, 3 repetitions: "alone" and "at once" runs alternate, and
#   the medians are compared, since this machine's throughput swings)
# Refuses to run while another lab is up (the lab is one per machine).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/mesh-load.sh: run as root (network namespaces)" >&2; exit 1; }
SECS=${1:-10}
REPS=${2:-3}
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
for r in $(seq 1 "$REPS"); do
  client "$a" "$ipb" 5201 "$out/alone$r.json"
  client "$a" "$ipb" 5201 "$out/f2-$r.json" & client "$a" "$ipc" 5201 "$out/f3-$r.json" & wait
done
mapfile -t alone < <(for r in $(seq 1 "$REPS"); do gbps "$out/alone$r.json"; done)
mapfile -t f2 < <(for r in $(seq 1 "$REPS"); do gbps "$out/f2-$r.json"; done)
mapfile -t f3 < <(for r in $(seq 1 "$REPS"); do gbps "$out/f3-$r.json"; done)
python3 - "${alone[*]}" "${f2[*]}" "${f3[*]}" <<'EOF'
import statistics as st, sys
alone, f2, f3 = ([float(v) for v in a.split()] for a in sys.argv[1:])
fair = [min(x, y) / max(x, y) for x, y in zip(f2, f3)]
print(f"fairness ({len(alone)} reps, medians): one stream alone {st.median(alone):.2f} Gbit/s; "
      f"to node-2 {st.median(f2):.2f} and to node-3 {st.median(f3):.2f} at once "
      f"(sum {st.median([x + y for x, y in zip(f2, f3)]):.2f}; slower/faster {st.median(fair):.2f}, "
      f"worst {min(fair):.2f})")
print("  each rep (alone | node-2 + node-3):", "; ".join(f"{a:.2f} | {x:.2f} + {y:.2f}" for a, x, y in zip(alone, f2, f3)))
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
for r in $(seq 1 "$REPS"); do
  client "$a0" "$ip0" 5201 "$out/one$r.json"
  for i in $(seq 0 7); do
    read -r ns _ <<<"${left[$i]}"; read -r _ ip <<<"${right[$i]}"
    client "$ns" "$ip" $((5201 + i)) "$out/r$r-p$i.json" &
  done
  wait
done
mapfile -t one < <(for r in $(seq 1 "$REPS"); do gbps "$out/one$r.json"; done)
all=()
for r in $(seq 1 "$REPS"); do
  mapfile -t each < <(gbps "$out"/r"$r"-p?.json)
  all+=("${each[*]}")
done
python3 - "${one[*]}" "${all[@]}" <<'EOF'
import statistics as st, sys
one = [float(v) for v in sys.argv[1].split()]
reps = [[float(v) for v in r.split()] for r in sys.argv[2:]]
sums = [sum(r) for r in reps]
print(f"many pods ({len(one)} reps, medians): one pair alone {st.median(one):.2f} Gbit/s; "
      f"8 pairs at once {st.median(sums):.2f} in all ({st.median(sums) / st.median(one):.2f}x one pair)")
print("  each rep (alone | 8 at once, per pair min-max):",
      "; ".join(f"{o:.2f} | {s:.2f} ({min(r):.2f}-{max(r):.2f})" for o, s, r in zip(one, sums, reps)))
EOF
