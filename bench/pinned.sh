#!/usr/bin/env bash
# One CPU per node: the bench's two-node topology (`podguard-bench up`)
# with every process of node A and its pod pinned to CPU 0 and every
# process of node B and its pod to CPU 1 (`taskset`), so the two nodes
# stop competing for both cores as they do in `podguard-bench
# throughput`, and no hand-off inside a node crosses vCPUs. Two 1-core
# nodes on one wire: nearer to separate machines, though the veth between
# them still crosses from one CPU to the other. The contenders alternate
# every round, each round on a fresh topology, and the medians are
# compared in the same run.
#   bench/pinned.sh [ROUNDS] [SECONDS] [CONTENDER...]
#   (root; default 5 rounds of 5 s, podguard and wireguard-go-sid)
# Prints per contender: one stream A→B and B→A (Gbit/s), and the tunnel
# processes' CPU seconds per Gbit (both nodes, A→B stream); then the
# ratios to the last contender. Raw iperf3 JSON in $OUT (default: a
# fresh directory under /tmp, printed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "bench/pinned.sh: run as root (network namespaces)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench/pinned.sh: needs 2 CPUs" >&2; exit 1; }
ROUNDS=${1:-5}
SECS=${2:-5}
shift $(( $# > 2 ? 2 : $# ))
CONTENDERS=("$@")
[ ${#CONTENDERS[@]} -gt 0 ] || CONTENDERS=(podguard wireguard-go-sid)
BENCH=./target/release/podguard-bench
[ -x "$BENCH" ] || { echo "bench/pinned.sh: build first: cargo build --release --bins -p podguard -p podguard-bench" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/pgbench-pinned.XXXXXX)}
mkdir -p "$OUT"
echo "results in $OUT" >&2

up_pid=
cleanup() {
  if [ -n "$up_pid" ]; then kill -INT "$up_pid" 2>/dev/null || true; wait "$up_pid" 2>/dev/null || true; fi
  up_pid=
}
trap cleanup EXIT

# Pin every thread of every process in netns $1 to CPU $2.
pin() {
  for pid in $(ip netns pids "$1"); do taskset -a -p -c "$2" "$pid" >/dev/null; done
}

# utime+stime (clock ticks) of every process in the node namespaces.
ticks() {
  local t=0
  for n in pgbench-a pgbench-b; do
    for pid in $(ip netns pids "$n"); do
      t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
  done
  echo "$t"
}

for r in $(seq 1 "$ROUNDS"); do
  for c in "${CONTENDERS[@]}"; do
    log="$OUT/$c-$r.up.log"
    "$BENCH" up --contender "$c" >"$log" 2>&1 &
    up_pid=$!
    for _ in $(seq 1 300); do grep -q "^up:" "$log" && break; sleep 0.1; done
    grep -q "^up:" "$log" || { cat "$log" >&2; exit 1; }
    pin pgbench-a 0; pin pgbench-pa 0
    pin pgbench-b 1; pin pgbench-pb 1
    ip netns exec pgbench-pb taskset -c 1 iperf3 -s -D -p 5201
    sleep 0.5
    t0=$(ticks)
    ip netns exec pgbench-pa taskset -c 0 iperf3 -J -c 10.244.2.2 -t "$SECS" >"$OUT/$c-$r.ab.json"
    t1=$(ticks)
    echo "$t0 $t1 $(getconf CLK_TCK)" >"$OUT/$c-$r.ticks"
    ip netns exec pgbench-pa taskset -c 0 iperf3 -J -R -c 10.244.2.2 -t "$SECS" >"$OUT/$c-$r.ba.json"
    pkill -f "iperf3 -s -D -p 5201" || true
    cleanup
  done
done

python3 - "$OUT" "$SECS" "${CONTENDERS[@]}" <<'EOF'
import glob, json, statistics as st, sys
out, secs, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def gbps(f):
    return json.load(open(f))["end"]["sum_received"]["bits_per_second"] / 1e9
res = {}
for n in names:
    ab = [gbps(f) for f in sorted(glob.glob(f"{out}/{n}-*.ab.json"))]
    ba = [gbps(f) for f in sorted(glob.glob(f"{out}/{n}-*.ba.json"))]
    cpu = []
    for f, g in zip(sorted(glob.glob(f"{out}/{n}-*.ticks")), ab):
        t0, t1, hz = map(float, open(f).read().split())
        if g > 0:
            cpu.append((t1 - t0) / hz / (g * secs))
    res[n] = (st.median(ab), st.median(ba), st.median(cpu))
    print(f"{n}: 1 stream A→B {res[n][0]:.2f} ({min(ab):.2f}–{max(ab):.2f}), "
          f"B→A {res[n][1]:.2f} ({min(ba):.2f}–{max(ba):.2f}) Gbit/s, "
          f"CPU {res[n][2]:.3f} s/Gbit, {len(ab)} rounds")
last = names[-1]
for n in names[:-1]:
    a, b = res[n], res[last]
    print(f"{n} / {last}: A→B {a[0]/b[0]:.2f}x, B→A {a[1]/b[1]:.2f}x, CPU per Gbit {a[2]/b[2]:.2f}x")
EOF
