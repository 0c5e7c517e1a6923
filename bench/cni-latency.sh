#!/usr/bin/env bash
# CNI ADD+DEL latency: podguard-cni vs the reference bridge + host-local
# plugins (Debian's containernetworking-plugins), same node namespace, same
# machine, interleaved rounds. Run as root:
#   bench/cni-latency.sh [ROUNDS]        (default 200)
# Prints median and p99 of one ADD followed by one DEL, in milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-200}
REF=/usr/lib/cni
if [ ! -x "$REF/bridge" ] || [ ! -x "$REF/host-local" ]; then
  echo "missing the reference plugins: apt-get install -y containernetworking-plugins" >&2
  exit 1
fi
cargo build --release --bin podguard-cni >&2
PG=$PWD/target/release/podguard-cni
P=pgbench$$
WORK=$(mktemp -d)
cleanup() {
  for n in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do ip netns del "$n"; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add $P-node
ip -n $P-node link set lo up
ip -n $P-node link add cbr0 type bridge
ip -n $P-node addr add 10.244.1.1/24 dev cbr0
ip -n $P-node link set cbr0 up
ip -n $P-node link add refbr0 type bridge
ip -n $P-node link set refbr0 up
ip netns add $P-pod
cat > "$WORK/node.json" <<JSON
{"nodeName":"bench","bridge":"cbr0","mtu":1440,"podCIDRs":["10.244.1.0/24"],"gateways":["10.244.1.1"]}
JSON
PGCONF='{"cniVersion":"1.0.0","name":"podguard","type":"podguard","nodeStateFile":"'$WORK'/node.json","dataDir":"'$WORK'/ipam"}'
REFCONF='{"cniVersion":"1.0.0","name":"ref","type":"bridge","bridge":"refbr0","isGateway":true,"mtu":1440,"ipam":{"type":"host-local","subnet":"10.245.1.0/24","dataDir":"'$WORK'/ref-ipam"}}'

now_ns() { date +%s%N; }
one() { # $1 plugin $2 conf $3 id -> prints ns for ADD+DEL
  local t0 t1
  t0=$(now_ns)
  echo "$2" | ip netns exec $P-node env CNI_COMMAND=ADD CNI_CONTAINERID="$3" CNI_NETNS=/run/netns/$P-pod CNI_IFNAME=eth0 CNI_PATH=$REF "$1" >/dev/null
  echo "$2" | ip netns exec $P-node env CNI_COMMAND=DEL CNI_CONTAINERID="$3" CNI_NETNS=/run/netns/$P-pod CNI_IFNAME=eth0 CNI_PATH=$REF "$1" >/dev/null
  t1=$(now_ns)
  echo $((t1 - t0))
}
: > "$WORK/pg"; : > "$WORK/ref"
for i in $(seq 1 "$ROUNDS"); do
  one "$PG" "$PGCONF" "pg$i" >> "$WORK/pg"
  one "$REF/bridge" "$REFCONF" "ref$i" >> "$WORK/ref"
  if (( i % 50 == 0 )); then echo "  $i/$ROUNDS rounds" >&2; fi
done
stats() { sort -n "$1" | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.99+0.999)]; printf "%.2f %.2f\n", m/1e6, p/1e6}'; }
read -r pgm pgp < <(stats "$WORK/pg")
read -r rfm rfp < <(stats "$WORK/ref")
echo "| plugin | ADD+DEL median (ms) | p99 (ms) |"
echo "| --- | ---: | ---: |"
echo "| podguard-cni | $pgm | $pgp |"
echo "| bridge + host-local | $rfm | $rfp |"
awk -v a="$pgm" -v b="$rfm" 'BEGIN { printf "\npodguard median / reference median = %.2f (rounds: %d, each includes 2x ip netns exec)\n", a/b, '"$ROUNDS"' }'
