#!/usr/bin/env bash
# The mesh at scale, in the lab (one pod per node, IPv4, userspace device,
# release build): for each node count, time to converge (every node's
# mesh digest agrees, no peer problems), time to full reachability (a
# `lab check` of every pod pair passing), agent RSS, idle CPU and
# handshakes per minute over an idle window that spans a rekey; then
# `podguard rotate --all` and the same again.
#   bench/scale.sh [NODES...]   (root; default: 10 30 50; IDLE=seconds, BIN_DIR=dir)
# Writes bench/results/scale.md. Refuses to run while a lab is up.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("${@:-10 30 50}")
# shellcheck disable=SC2206
SIZES=(${SIZES[*]})
IDLE=${IDLE:-130}
[ "$(id -u)" -eq 0 ] || { echo "bench/scale.sh: needs root (network namespaces)" >&2; exit 1; }
# BIN_DIR: use the binaries there (podguard, podguard-agent, podguard-cni)
# instead of building this checkout.
if [ -n "${BIN_DIR:-}" ]; then
  PG=$BIN_DIR/podguard
else
  cargo build --release --locked --bins >&2
  PG=./target/release/podguard
fi
if ip netns list | grep -q '^pglab-'; then
  echo "bench/scale.sh: a lab is up; take it down first (podguard lab down)" >&2
  exit 1
fi
trap '$PG lab down >/dev/null 2>&1 || true' EXIT

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

agent_pids() {
  local n=$1 i p
  for i in $(seq 1 "$n"); do
    for p in $(ip netns pids "pglab-n$i"); do
      [ "$(cat "/proc/$p/comm" 2>/dev/null)" = podguard-agent ] && echo "$p"
    done
  done
}

# CPU ticks (utime + stime) of each pid, one per line.
ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }

# Sum over every node of the handshake initiations its device sent.
initiations() {
  local n=$1 i sum=0 v
  for i in $(seq 1 "$n"); do
    v=$(ip netns exec "pglab-n$i" curl -s --max-time 5 127.0.0.1:9721/metrics |
      awk '/^podguard_peer_handshake_initiations_total/ {s += $NF} END {print s + 0}')
    sum=$((sum + v))
  done
  echo "$sum"
}

# RSS (max, mean, MiB), idle CPU (max, mean, % of a core) and cluster
# handshakes per minute over $IDLE seconds.
idle_figures() {
  local n=$1 pids t0 t1 h0 h1
  mapfile -t pids < <(agent_pids "$n")
  [ "${#pids[@]}" -eq "$n" ] || { echo "expected $n agents, found ${#pids[@]}" >&2; exit 1; }
  mapfile -t t0 < <(ticks "${pids[@]}")
  h0=$(initiations "$n")
  sleep "$IDLE"
  mapfile -t t1 < <(ticks "${pids[@]}")
  h1=$(initiations "$n")
  local cpu=() i
  for i in "${!pids[@]}"; do cpu+=("$(( t1[i] - t0[i] ))"); done
  local rss
  rss=$(for p in "${pids[@]}"; do awk '/^VmRSS/ {print $2}' "/proc/$p/status"; done |
    awk '{s += $1; if ($1 > m) m = $1} END {printf "%.1f / %.1f", m / 1024, s / NR / 1024}')
  local cpus
  cpus=$(printf '%s\n' "${cpu[@]}" |
    awk -v t="$IDLE" '{s += $1; if ($1 > m) m = $1} END {printf "%.2f / %.2f", m / t, s / NR / t}')
  local hpm
  hpm=$(awk -v a="$h0" -v b="$h1" -v t="$IDLE" 'BEGIN {printf "%.0f", (b - a) * 60 / t}')
  echo "$rss|$cpus|$hpm"
}

wait_status() {
  local deadline=$(( $(date +%s) + $1 ))
  until $PG status --lab >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "status not green within $1 s" >&2; $PG status --lab >&2 || true; exit 1; }
    sleep 0.5
  done
}

check_pass() {
  local out
  out=$($PG lab check --output json 2>/dev/null) || { echo "lab check failed" >&2; echo "$out" | head -c 2000 >&2; exit 1; }
}

mkdir -p bench/results
out=bench/results/scale.md
{
  echo "Machine: $(nproc) cores, Linux $(uname -r), $(date -u +%F). Idle window ${IDLE} s. RSS and CPU: max / mean per agent."
  echo
  echo "| nodes | phase | converge (s) | full reachability (s) | lab check (s) | RSS MiB | idle CPU % of a core | handshakes/min (cluster) | handshakes/min per node | rotate --all (s) |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
} >"$out"
for n in "${SIZES[@]}"; do
  echo "== $n nodes" >&2
  t0=$(now)
  if ! up=$($PG lab up --nodes "$n" --pods-per-node 1 --ipv4-only 2>&1); then
    echo "bench/scale.sh: lab up --nodes $n failed:" >&2
    echo "$up" >&2
    exit 1
  fi
  wait_status 300
  t_conv=$(now)
  c0=$(now); check_pass; c1=$(now)
  IFS='|' read -r rss cpu hpm <<<"$(idle_figures "$n")"
  per=$(awk -v h="$hpm" -v n="$n" 'BEGIN {printf "%.1f", h / n}')
  echo "| $n | up | $(secs "$t0" "$t_conv") | $(secs "$t0" "$c1") | $(secs "$c0" "$c1") | $rss | $cpu | $hpm | $per | |" | tee -a "$out" >&2
  r0=$(now)
  $PG rotate --lab --all >/dev/null
  r1=$(now)
  wait_status 300
  t_conv=$(now)
  c0=$(now); check_pass; c1=$(now)
  IFS='|' read -r rss cpu hpm <<<"$(idle_figures "$n")"
  per=$(awk -v h="$hpm" -v n="$n" 'BEGIN {printf "%.1f", h / n}')
  echo "| $n | after rotate --all | $(secs "$r1" "$t_conv") | $(secs "$r1" "$c1") | $(secs "$c0" "$c1") | $rss | $cpu | $hpm | $per | $(secs "$r0" "$r1") |" | tee -a "$out" >&2
  $PG lab down >/dev/null
done
cat "$out"
