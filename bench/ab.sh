#!/usr/bin/env bash
# Paired A/B of podguard builds: `bench/ab.sh OUT ROUNDS DIR...` runs
# `podguard-bench throughput --contenders podguard --reps 1` with each
# DIR's binaries (a copy of target/release's podguard-bench and
# podguard-agent, one DIR per build), the builds alternating ROUNDS times,
# so the machine's drift hits every build alike; then prints each build's
# medians. Root, like the bench. Results: OUT/<dir name>-<round>/.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: bench/ab.sh OUT ROUNDS DIR..." >&2; exit 2; }
out=$1; rounds=$2; shift 2
for d in "$@"; do
  [ -x "$d/podguard-bench" ] && [ -x "$d/podguard-agent" ] \
    || { echo "bench/ab.sh: $d needs podguard-bench and podguard-agent" >&2; exit 2; }
done
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for d in "$@"; do
    n=$(basename "$d")
    "$d/podguard-bench" throughput --contenders podguard --reps 1 \
      --out "$out/$n-$r" > "$out/$n-$r.log" 2>&1
  done
done
python3 - "$out" "$@" <<'P'
import glob, json, statistics as st, sys
out = sys.argv[1]
for d in sys.argv[2:]:
    n = d.rstrip('/').split('/')[-1]
    rows = [json.load(open(f))['rows'][0]
            for f in sorted(glob.glob(f"{out}/{n}-*/throughput.json"))]
    m = lambda k: st.median(r[k]['median'] for r in rows)
    print(f"{n}: {len(rows)} rounds, medians: 1 stream A→B {m('single_ab'):.2f}, "
          f"B→A {m('single_ba'):.2f}, 4 streams A→B {m('four_ab'):.2f}, "
          f"16 streams A→B {m('sixteen_ab'):.2f} Gbit/s, CPU {m('cpu_per_gbit'):.3f} s/Gbit")
P
