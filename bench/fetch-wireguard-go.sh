#!/usr/bin/env bash
# Fetch wireguard-go from a Debian suite and extract its binary to
# target/bench-tools/wireguard-go-SUITE — no system upgrade, no change to the
# system's apt sources (apt runs with private list and cache dirs).
#
#   bench/fetch-wireguard-go.sh trixie   # 0.0.20231211 (TUN offloads)
#   bench/fetch-wireguard-go.sh sid      # the newest Debian ships
set -euo pipefail
cd "$(dirname "$0")/.."
suite="${1:?usage: bench/fetch-wireguard-go.sh SUITE (trixie or sid)}"
case "$suite" in
  *[!a-z-]*) echo "bench/fetch-wireguard-go.sh: '$suite' is not a Debian suite name (e.g. trixie, sid)" >&2; exit 2 ;;
esac
out=$PWD/target/bench-tools
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$out"
chmod 755 "$work"
echo "deb http://deb.debian.org/debian $suite main" > "$work/sources.list"
opts=(-q -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=- \
      -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache")
apt-get "${opts[@]}" update >/dev/null
(cd "$work" && apt-get "${opts[@]}" download wireguard-go >/dev/null 2>&1) \
  || { echo "bench/fetch-wireguard-go.sh: no wireguard-go in Debian $suite" >&2; exit 1; }
deb=$(ls "$work"/wireguard-go_*.deb)
dpkg -x "$deb" "$work/x"
install -m 0755 "$work/x/usr/bin/wireguard-go" "$out/wireguard-go-$suite"
"$out/wireguard-go-$suite" --version
echo "installed $out/wireguard-go-$suite from $(basename "$deb")"
