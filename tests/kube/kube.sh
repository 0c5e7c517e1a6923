#!/usr/bin/env bash
# The real Kubernetes control plane for the lab and the tests: kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl of one pinned release,
# a node's kubelet and kube-proxy of the same release, and etcd, built from
# the Go module proxy into a cache outside the repo (never committed).
# $CACHE/bin links to the current build (what `podguard lab up --kube real`
# uses unless PODGUARD_KUBE_BIN says otherwise).
#
#   kube.sh setup    build what is missing (idempotent; Go's module and build
#                    caches are reused), print the bin directory
#   kube.sh bin      print the bin directory (exit 1 if not built)
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the
# staging modules (k8s.io/api, k8s.io/client-go, ...) with local paths. A
# small build module requires it and replaces each staging module with its
# published version of the same release (v0.X.Y for v1.X.Y). etcd has a
# build module of its own (its dependencies must not meet Kubernetes' in
# one module graph).
#
# helm (for the chart in deploy/chart: tests/deploy.rs lints and renders
# it) and kube-router (a real NetworkPolicy enforcer for tests/kube_real.rs)
# are built the same way, with `go install`, into the same bin directory.
#
# Cache: PODGUARD_KUBE_CACHE, default /var/cache/podguard-kube.
set -euo pipefail

KUBE_VERSION=${PODGUARD_KUBE_VERSION:-v1.36.3}
ETCD_VERSION=${PODGUARD_ETCD_VERSION:-v3.6.16}
HELM_VERSION=${PODGUARD_HELM_VERSION:-v4.3.2}
# kube-router, whose NetworkPolicy controller alone (--run-firewall)
# tests/kube_real.rs runs next to podguard (keep in step with
# tests/common/netpol.rs). v2.1.0 is the release the Go proxy serves here;
# it is a test counterpart in network namespaces, never shipped.
KUBE_ROUTER_VERSION=${PODGUARD_KUBE_ROUTER_VERSION:-v2.1.0}
CACHE=${PODGUARD_KUBE_CACHE:-/var/cache/podguard-kube}
BIN=$CACHE/$KUBE_VERSION-etcd-$ETCD_VERSION/bin

die() { echo "kube.sh: $*" >&2; exit 1; }

# The Kubernetes binaries: the control plane and kubectl, and a node's
# kube-scheduler, kubelet and kube-proxy (tests/kubelet.rs runs the shipped
# DaemonSet under real kubelets).
KUBE_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"

# How the Kubernetes binaries are built; a cache built another way is
# rebuilt. 2: the release's version stamped in (else they report
# v0.0.0-master, and helm refuses a chart's kubeVersion: >=1.30).
KUBE_RECIPE=2

kube_built() {
  local c
  for c in $KUBE_CMDS; do [ -x "$BIN/$c" ] || return 1; done
  [ "$(cat "$BIN/kube.recipe" 2>/dev/null)" = "$KUBE_RECIPE" ]
}

# -ldflags of the Kubernetes binaries: the version stamp `make` would set
# (hack/lib/version.sh), for the servers and for client-go.
kube_ldflags() {
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local kv=(gitVersion="$KUBE_VERSION" gitMajor=1 gitMinor="$minor" gitTreeState=clean
            buildDate=1970-01-01T00:00:00Z)
  local out="-s -w" p x
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for x in "${kv[@]}"; do out+=" -X $p.$x"; done
  done
  echo "$out"
}

etcd_built() { [ -x "$BIN/etcd" ]; }

built() { kube_built && etcd_built; }

kube_router_built() {
  [ -x "$BIN/kube-router" ] && [ "$(cat "$BIN/kube-router.version" 2>/dev/null)" = "$KUBE_ROUTER_VERSION" ]
}

helm_built() {
  [ -x "$BIN/helm" ] && [ "$(cat "$BIN/helm.version" 2>/dev/null)" = "$HELM_VERSION" ]
}

# The build module of k8s.io/kubernetes@$KUBE_VERSION.
kube_module() {
  local dir=$1 gomod staging
  mkdir -p "$dir"
  cd "$dir"
  rm -f go.mod go.sum
  go mod init podguard.dev/kube-build >/dev/null 2>&1
  # Kubernetes' own go.mod: its replace lines name every staging module.
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [ -f "$gomod" ] || die "go mod download k8s.io/kubernetes@$KUBE_VERSION gave no go.mod"
  staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
  [ -n "$staging" ] || die "no staging replaces in $gomod"
  local minor=v0.${KUBE_VERSION#v1.}
  for m in $staging; do
    go mod edit -replace "$m=$m@$minor"
  done
  go mod edit -require "k8s.io/kubernetes@$KUBE_VERSION"
  # The go directive of Kubernetes itself (a newer one than ours would
  # need GOTOOLCHAIN).
  go mod edit -go "$(sed -n 's/^go \([0-9.]*\)/\1/p' "$gomod")"
  local c pkgs=()
  for c in $KUBE_CMDS; do pkgs+=("k8s.io/kubernetes/cmd/$c@$KUBE_VERSION"); done
  go get "${pkgs[@]}"
}

etcd_module() {
  local dir=$1
  mkdir -p "$dir"
  cd "$dir"
  rm -f go.mod go.sum
  go mod init podguard.dev/etcd-build >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
}

setup() {
  if built && helm_built && kube_router_built; then ln -sfn "$BIN" "$CACHE/bin"; echo "$BIN"; return 0; fi
  command -v go >/dev/null || die "no Go toolchain (go) on PATH: it builds what is missing in $BIN"
  local start=$SECONDS work=$CACHE/build
  mkdir -p "$BIN" "$work"
  export CGO_ENABLED=0
  local ld="-s -w"
  if ! kube_built; then
    local c pkgs=()
    for c in $KUBE_CMDS; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    (export GOFLAGS=-mod=mod
      kube_module "$work/kube" \
      && go build -trimpath -ldflags "$(kube_ldflags)" -o "$BIN/" "${pkgs[@]}") \
      || die "building $KUBE_CMDS $KUBE_VERSION failed"
    echo "$KUBE_RECIPE" >"$BIN/kube.recipe"
  fi
  if ! etcd_built; then
    (export GOFLAGS=-mod=mod
      etcd_module "$work/etcd" && go build -trimpath -ldflags "$ld" -o "$BIN/etcd" go.etcd.io/etcd/server/v3) \
      || die "building etcd $ETCD_VERSION failed"
  fi
  built || die "the build left no binaries in $BIN"
  if ! helm_built; then
    (cd "$work" && GOBIN="$BIN" go install -trimpath -ldflags "$ld" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION") \
      || die "building helm $HELM_VERSION failed"
    echo "$HELM_VERSION" >"$BIN/helm.version"
  fi
  if ! kube_router_built; then
    # Built as it was tested: with cgo (the toolchain's default).
    (cd "$work" && CGO_ENABLED=1 GOBIN="$BIN" go install -trimpath -ldflags "$ld" \
        "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION") \
      || die "building kube-router $KUBE_ROUTER_VERSION failed"
    echo "$KUBE_ROUTER_VERSION" >"$BIN/kube-router.version"
  fi
  ln -sfn "$BIN" "$CACHE/bin"
  # The build and module caches (GBs) are not needed again on a CI machine,
  # which builds once: give the disk back to the Rust builds.
  if [ "${CI:-}" = "true" ]; then go clean -cache -modcache; fi
  echo "kube.sh: built Kubernetes $KUBE_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION and kube-router $KUBE_ROUTER_VERSION in $((SECONDS - start)) s" >&2
  echo "$BIN"
}

case "${1:-}" in
  setup) setup ;;
  bin) built || die "not built: run bash tests/kube/kube.sh setup"; echo "$BIN" ;;
  *) die "usage: kube.sh setup|bin" ;;
esac
