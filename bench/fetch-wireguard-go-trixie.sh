#!/usr/bin/env bash
# Fetch wireguard-go 0.0.20231211 (with TUN offloads) from Debian trixie and
# extract its binary to target/bench-tools/ — no system upgrade, no change to
# the system's apt sources (apt runs with private list and cache dirs).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$PWD/target/bench-tools
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$out"
chmod 755 "$work"
echo "deb http://deb.debian.org/debian trixie main" > "$work/sources.list"
opts=(-q -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=- \
      -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache")
apt-get "${opts[@]}" update >/dev/null
(cd "$work" && apt-get "${opts[@]}" download wireguard-go >/dev/null 2>&1)
deb=$(ls "$work"/wireguard-go_*.deb)
dpkg -x "$deb" "$work/x"
install -m 0755 "$work/x/usr/bin/wireguard-go" "$out/wireguard-go-trixie"
"$out/wireguard-go-trixie" --version
echo "installed $out/wireguard-go-trixie from $(basename "$deb")"
