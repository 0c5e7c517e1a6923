#!/usr/bin/env bash
# The podguard image, built without a registry: this checkout's release
# binaries plus nft, wg and ip (and every shared library they load) from the
# build machine's own Debian 12 packages, as one OCI image layer. Nothing
# is pulled: no base image, no crates at image build time. (The
# alternative, deploy/Containerfile, starts from docker.io images.)
#
#   deploy/image.sh [OUT_DIR]     (default: target/image)
#     BIN_DIR=dir   take podguard, podguard-agent, podguard-cni from dir
#                   (default: target/release; build them first with
#                   cargo build --release --locked --bins)
#
# Writes OUT_DIR/podguard-VERSION.oci.tar (an OCI image layout: `podman
# load -i`, `skopeo copy oci-archive:...`, `ctr image import`) tagged
# ghcr.io/podguard/podguard:VERSION, VERSION being the chart's appVersion,
# and leaves the image's filesystem in OUT_DIR/rootfs.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "deploy/image.sh: $*" >&2; exit 1; }
OUT=${1:-target/image}
BIN=${BIN_DIR:-target/release}
VERSION=$(sed -n 's/^appVersion: "\(.*\)"$/\1/p' deploy/chart/Chart.yaml)
[ -n "$VERSION" ] || die "no appVersion in deploy/chart/Chart.yaml"
NAME=ghcr.io/podguard/podguard:$VERSION
for b in podguard podguard-agent podguard-cni; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run cargo build --release --locked --bins (or set BIN_DIR)"
done
tools=()
for t in nft wg ip; do
  p=$(command -v "$t") || die "$t is missing on this machine: apt-get install -y nftables wireguard-tools iproute2"
  tools+=("$(readlink -f "$p")")
done

mkdir -p "$OUT"
r=$OUT/rootfs
rm -rf "$r"
mkdir -p "$r"/{usr/local/bin,usr/bin,usr/sbin,etc/ssl/certs,tmp,run,var/lib/podguard,var/run,proc,sys,dev}
chmod 1777 "$r/tmp"
ln -s usr/bin "$r/bin"
ln -s usr/sbin "$r/sbin"
for b in podguard podguard-agent podguard-cni; do install -m 0755 "$BIN/$b" "$r/usr/local/bin/$b"; done
for t in "${tools[@]}"; do install -m 0755 "$t" "$r/usr/sbin/$(basename "$t")"; done
# Each shared library at the path the loader looks for it (ldd's view).
for f in "$r"/usr/local/bin/* "$r"/usr/sbin/*; do
  ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\// {print $1}'
done | sort -u | while read -r lib; do
  mkdir -p "$r$(dirname "$lib")"
  cp -L "$lib" "$r$lib"
done
# The system CA bundle, for anything that verifies against it (the API
# server itself is verified against the ServiceAccount's CA).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
: >"$r/etc/hosts"; : >"$r/etc/resolv.conf"

t=$(mktemp -d "$OUT/build.XXXXXX")
trap 'rm -rf "$t"' EXIT
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$r" -cf "$t/layer.tar" .
case $(dpkg --print-architecture) in
  amd64) arch=amd64 ;; arm64) arch=arm64 ;; *) arch=$(dpkg --print-architecture) ;;
esac
o=$t/oci; mkdir -p "$o/blobs/sha256"
blob() { # file -> prints "digest size", moves it into the blob store
  local d s; d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  mv "$1" "$o/blobs/sha256/$d"; echo "$d $s"
}
read -r ld ls < <(blob "$t/layer.tar")
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/bin:/usr/sbin:/usr/bin"],"Entrypoint":["podguard-agent"],"WorkingDir":"/","Labels":{"org.opencontainers.image.version":"%s","org.opencontainers.image.title":"podguard"}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"deploy/image.sh"}]}' \
  "$arch" "$VERSION" "$ld" >"$t/config.json"
read -r cd cs < <(blob "$t/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
  "$cd" "$cs" "$ld" "$ls" >"$t/manifest.json"
read -r md ms < <(blob "$t/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$md" "$ms" "$NAME" "$VERSION" >"$o/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$o/oci-layout"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$o" -cf "$OUT/podguard-$VERSION.oci.tar" oci-layout index.json blobs
echo "deploy/image.sh: wrote $OUT/podguard-$VERSION.oci.tar ($NAME, $(du -sh "$r" | cut -f1) unpacked)" >&2
