#!/usr/bin/env bash
# rt.sh: real container runtimes (podman 4.3 with its CNI backend, containerd
# 1.6 via `ctr run --cni`) inside per-"node" network namespaces, so that tests
# can drive a CNI plugin exactly as a runtime installs and calls it.
#
# Interface (progress and errors go to stderr; stdout is only what is listed):
#   rt.sh setup              idempotent: apt-get install what is missing, build
#                            the busybox image files into $PGRT_CACHE
#   rt.sh node-up ID NETNS   NETNS (a name in /run/netns, or a path) must exist
#                            (the caller makes it). Starts node ID: a holder
#                            mount namespace with the node's own dirs bound over
#                            the system paths, a containerd of its own, and the
#                            busybox image imported into podman and containerd.
#                            Prints `rt.sh info ID`. On failure it cleans up
#                            (PGRT_KEEP=1 keeps the wreck for a look).
#   rt.sh info ID            KEY=VALUE lines: where the node's dirs live on the
#                            host (write the conflist to PGRT_CNI_CONF_DIR and
#                            the plugin binary to PGRT_CNI_BIN_DIR), the pids,
#                            the image name, the containerd socket
#   rt.sh in ID [--] CMD...  run CMD in node ID's mount ns + net ns, cwd kept
#                            when it exists there, stdin/stdout/exit code passed
#   rt.sh podman ID ARGS...  = rt.sh in ID podman ARGS...
#   rt.sh ctr ID ARGS...     = rt.sh in ID ctr ARGS... (ctr's namespace and
#                            socket come from CONTAINERD_NAMESPACE/ADDRESS)
#   rt.sh ctr-run-bg ID CTR ARGS...
#                            `ctr run --cni ARGS...` (ARGS as for ctr run,
#                            without -d: [FLAGS] IMAGE CTR [CMD...]) left
#                            running in the background until task CTR runs.
#                            Use it when the test needs ctr's CNI DEL: ctr
#                            1.6 only calls DEL from a foreground `ctr run`,
#                            when the task exits (CNI_NETNS empty then);
#                            `ctr run -d` + task kill/rm + container rm never
#                            calls DEL (the lease and the cache leak).
#   rt.sh ctr-stop ID CTR [SIGNAL]
#                            kill task CTR (SIGKILL), wait for the ctr-run-bg
#                            process to finish (its DEL), remove container CTR
#   rt.sh node-down ID       remove all containers (podman rm -f -a; ctr tasks
#                            kill/rm, containers rm), stop containerd, kill
#                            every process left in the node's mount ns (and its
#                            descendants: conmon, shims, container processes),
#                            the holder, remove the node's cgroups and dir.
#                            Works on a half-made node; no-op on an absent one.
#                            Does not delete NETNS (the caller made it).
#   rt.sh gc                 node-down for every node under $PGRT_RUN
#
#   IDs must be unique on the machine (they name /run/podguard-rt/ID and the
#   containerd namespace pgrt-ID): put the caller's instance prefix in them,
#   e.g. pgrt1-n1.
#
# Environment: PGRT_CACHE (default /var/cache/podguard-rt), PGRT_RUN (default
# /run/podguard-rt), PGRT_KEEP=1 (node-up: keep a failed node),
# PGRT_KUBELET=1 (node-up: a node for a kubelet: containerd's CRI plugin on,
# with the pause image localhost/pgrt-pause and the busybox image imported
# into containerd namespace k8s.io, and the host-wide sysctls kubelet wants
# bound over /proc/sys inside the node: see KUBELET_SYSCTLS).
#
# Layout of a node, D=/run/podguard-rt/ID, bound (in the holder's mount ns
# only) over:
#   D/etc-cni-net.d      /etc/cni/net.d       (podman + ctr --cni conflists)
#   D/opt-cni-bin        /opt/cni/bin         (the only plugin dir, see below)
#   D/var-lib-cni        /var/lib/cni         (host-local leases, libcni cache)
#   D/run-podguard       /run/podguard
#   D/var-lib-podguard   /var/lib/podguard
#   D/run-wireguard      /run/wireguard       (the agent's UAPI socket, for wg)
#   D/etc-containers     /etc/containers      (our containers.conf,
#                                              storage.conf, policy.json,
#                                              registries.conf)
#   D/var-lib-containers /var/lib/containers  (podman graphroot)
#   D/run-containers     /run/containers      (podman runroot)
#   D/run-libpod         /run/libpod          (podman tmpdir, events)
#   D/run-runc           /run/runc            (runc state of podman)
#   D/var-lib-containerd /var/lib/containerd  (containerd root)
#   D/run-containerd     /run/containerd      (containerd state + socket)
#   D/run-netns          /run/netns           (NETNS is bound in as
#                                              /run/netns/<its name>; the pod
#                                              netns podman makes live here,
#                                              invisible in the host's
#                                              /run/netns; from the host reach
#                                              them as
#                                              /proc/HOLDER/root/run/netns/X)
#   D/usr-lib-cni        /usr/lib/cni         (empty: Debian's containerd
#                                              (go-cni) sets CNI_PATH=
#                                              /opt/cni/bin:/usr/lib/cni, so a
#                                              plugin missing from the node's
#                                              dir would silently come from the
#                                              packaged ones)
#   D/var-lib-kubelet  /var/lib/kubelet     (kubelet's pods, volumes, certs)
#   D/var-log-pods     /var/log/pods        (containers' logs, from kubelet)
#   D/var-log-containers /var/log/containers
#   D/sysctl/PATH      /proc/sys/PATH       (PGRT_KUBELET=1 nodes: the
#                                              host-wide settings kubelet
#                                              wants, KUBELET_SYSCTLS)
#   tmpfs                /dev/shm             (podman's SHM lock segment
#                                              /dev/shm/libpod_lock is global
#                                              otherwise: a fresh podman store
#                                              "refreshes" and frees all locks,
#                                              trampling other nodes' and the
#                                              host's podman)
#   sysfs of NETNS       /sys                 (as `ip netns exec` does;
#                                              /sys/fs/cgroup moved back in)
# The host gets only empty directories as mount points (mkdir -p of the
# right-hand paths if missing). Nothing is mounted in the host's mount ns and
# the root network namespace is never touched.
#
# Environment facts this relies on (Debian 12, checked with podman
# 4.3.1+ds1-8+deb12u1, containerd 1.6.20~ds1-1+deb12u3, runc 1.1.5,
# containernetworking-plugins 1.1.1, no systemd as PID 1, cgroup v1 hybrid):
# - containers.conf (ours, D/etc-containers): network_backend = "cni" (the
#   default only while netavark is absent), cni_plugin_dirs = ["/opt/cni/bin"]
#   (the default list has /usr/lib/cni before it, so Debian's plugins would
#   shadow the node's), runtime = "runc" (crun 1.8.1: "cgroups in hybrid mode
#   not supported"), default_ulimits nofile/nproc = 1024 (without it runc
#   fails: "error setting rlimit type 7: operation not permitted", we lack
#   CAP_SYS_RESOURCE), cgroup_manager = "cgroupfs" and events_logger = "file"
#   (no systemd/journald; podman 4.3 would fall back by itself, set anyway),
#   NET_RAW added to the default capabilities (busybox ping needs a raw
#   socket; ping_group_range does not help it; ctr's default spec has it).
# - podman import needs /etc/containers/policy.json: we write one.
# - podman validates every conflist when it loads it (a VERSION call to each
#   plugin) and silently drops a network whose plugin is missing or does not
#   support its cniVersion: the run then fails with "unable to find network
#   with name or ID X: network not found" (the real reason is a warning).
# - podman CNI calls: CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<container name>,
#   CNI_CONTAINERID=<64-hex id>, CNI_NETNS=/run/netns/netns-<uuid>,
#   CNI_PATH=/opt/cni/bin, runtimeConfig.portMappings only when -p is given,
#   DEL (seen on podman rm -f) with the netns still there and prevResult
#   from the libcni cache; no loopback plugin call. It writes cni.lock into
#   /etc/cni/net.d. Its in-memory default network "podman" is used without
#   --network: always pass --network NAME.
# - ctr calls: CNI_ARGS empty, CNI_CONTAINERID=<ctr namespace>-<id>,
#   CNI_NETNS=/proc/<task pid>/ns/net, CNI_PATH=/opt/cni/bin:/usr/lib/cni,
#   no VERSION calls, no runtimeConfig. DEL only from a foreground ctr run
#   (see ctr-run-bg), with CNI_NETNS="".
# - cniVersion 0.3.1, 0.4.0, 1.0.0 work with both; 1.1.0 is refused (the 1.1.1
#   plugins stop at 1.0.0).
# - cgroups: podman puts containers in /libpod_parent/libpod-<id> and conmon
#   in /libpod_parent/conmon of every v1 hierarchy (outside the caller's
#   cgroup; podman rm removes the container's, the two parents stay as on any
#   podman host); containerd uses /pgrt-ID/<ctr>, removed by node-down.
# - no registry: the image is built from busybox-static; podman imports the
#   rootfs tar, containerd gets a hand-made OCI archive of the same tar
#   (annotation io.containerd.image.name names it for `ctr image import`).
#   Storage: podman overlay, containerd overlayfs (both fine on ext4 here).
# - no systemd: containerd runs by hand, one per node, config in
#   D/containerd.toml (CRI plugin disabled, opt plugin path inside D).
# - `nsenter --mount=/proc/HOLDER/ns/mnt --net=/proc/HOLDER/ns/net` for every
#   command of a node: podman and ctr of one node share one mount ns, so the
#   pod netns bind mounts podman makes in one call are there for `podman rm
#   -f` (CNI DEL) in a later call. Binds, not podman's --root/--runroot/...
#   flags: plain `podman`/`ctr` inside `in` then just work, and only a mount
#   ns isolates the SHM lock. setns into a mount ns resets cwd to /: `in` cds
#   back.
# - `ctr run --cni` reads only /etc/cni/net.d and /opt/cni/bin (+/usr/lib/cni)
#   and takes the FIRST config file there in lexical order (hence the binds;
#   name the conflist under test so it sorts first).
# - podman and ctr execute the CNI plugins themselves (not conmon/containerd),
#   in the caller's namespaces: the plugin runs in the node's mount ns + netns
#   with the node's /run/podguard etc.
# - `podman run -d`, `ctr run -d` and node-up leave no process holding the
#   caller's stdout: Rust's Command::output() returns.
# - node-down kills whatever still runs in the node's mount ns, including
#   processes a test started with `rt.sh in` (an agent, say).
set -euo pipefail

SELF=$(readlink -f "$0")
PGRT_CACHE=${PGRT_CACHE:-/var/cache/podguard-rt}
PGRT_RUN=${PGRT_RUN:-/run/podguard-rt}
IMAGE=localhost/pgrt-busybox:latest
# The CRI sandbox ("pause") image of PGRT_KUBELET nodes: the same busybox
# layer, `sleep inf` as its process (no registry: registry.k8s.io/pause
# cannot be pulled).
PAUSE_IMAGE=localhost/pgrt-pause:latest
CACHE_VERSION=2
PACKAGES=(podman containerd runc containernetworking-plugins busybox-static iptables nftables iproute2 util-linux conmon)
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}

# name in D : path in the node
BINDS=(
  etc-cni-net.d:/etc/cni/net.d
  opt-cni-bin:/opt/cni/bin
  var-lib-cni:/var/lib/cni
  run-podguard:/run/podguard
  var-lib-podguard:/var/lib/podguard
  run-wireguard:/run/wireguard
  etc-containers:/etc/containers
  var-lib-containers:/var/lib/containers
  run-containers:/run/containers
  run-libpod:/run/libpod
  run-runc:/run/runc
  var-lib-containerd:/var/lib/containerd
  run-containerd:/run/containerd
  run-netns:/run/netns
  usr-lib-cni:/usr/lib/cni
  var-lib-kubelet:/var/lib/kubelet
  var-log-pods:/var/log/pods
  var-log-containers:/var/log/containers
)

# PGRT_KUBELET=1 nodes: the host-wide kernel settings kubelet insists on
# (it writes them when they differ: cm.setupKernelTunables), as files bound
# over their /proc/sys entries in the node's mount ns. kubelet reads its
# values there and any write lands in the node's dir: the host's kernel
# settings are never changed.
KUBELET_SYSCTLS=(
  vm/overcommit_memory=1
  vm/panic_on_oom=0
  kernel/panic=10
  kernel/panic_on_oops=1
  kernel/keys/root_maxkeys=1000000
  kernel/keys/root_maxbytes=25000000
)

log() { printf 'rt.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

node_dir() {
  [[ ${1:-} =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$ ]] || die "bad node id '${1:-}'"
  printf '%s/%s' "$PGRT_RUN" "$1"
}

# ---------------------------------------------------------------- setup

cmd_setup() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    # policy-rc.d (present here) keeps apt from starting containerd; without
    # systemd as PID 1 nothing would start it anyway.
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
      apt-get update -q >&2
      apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
    fi
  fi
  build_image
  log "setup done: cache $PGRT_CACHE"
}

build_image() {
  local stamp
  stamp="v$CACHE_VERSION $(sha256sum /bin/busybox | cut -d' ' -f1)"
  if [[ -f $PGRT_CACHE/stamp && $(cat "$PGRT_CACHE/stamp") == "$stamp" &&
        -f $PGRT_CACHE/busybox-rootfs.tar && -f $PGRT_CACHE/busybox-oci.tar &&
        -f $PGRT_CACHE/pause-oci.tar ]]; then
    return 0
  fi
  log "building busybox image in $PGRT_CACHE"
  mkdir -p "$PGRT_CACHE"
  local t; t=$(mktemp -d "$PGRT_CACHE/build.XXXXXX")
  local r=$t/rootfs a
  mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,run,var/tmp,www}
  chmod 1777 "$r/tmp" "$r/var/tmp"
  cp /bin/busybox "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list-full); do
    [[ $a == bin/busybox ]] && continue
    mkdir -p "$r/$(dirname "$a")"
    ln -sf /bin/busybox "$r/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  : >"$r/etc/hosts"; : >"$r/etc/resolv.conf"; : >"$r/etc/hostname"
  echo pgrt-ok >"$r/www/index.html"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$r" -cf "$t/rootfs.tar" .

  oci_archive "$t" "$IMAGE" '["/bin/sh"]' "$t/oci.tar"
  oci_archive "$t" "$PAUSE_IMAGE" '["/bin/sleep","inf"]' "$t/pause-oci.tar"

  mv -f "$t/rootfs.tar" "$PGRT_CACHE/busybox-rootfs.tar"
  mv -f "$t/oci.tar" "$PGRT_CACHE/busybox-oci.tar"
  mv -f "$t/pause-oci.tar" "$PGRT_CACHE/pause-oci.tar"
  rm -rf "$t"
  echo "$stamp" >"$PGRT_CACHE/stamp"
}

# oci_archive T NAME CMD_JSON OUT: an OCI image layout of T/rootfs.tar (one
# uncompressed layer) named NAME (annotation io.containerd.image.name, for
# `ctr image import`), running CMD_JSON, written as the tar OUT.
oci_archive() {
  local t=$1 name=$2 cmd=$3 out=$4
  local arch
  case $(dpkg --print-architecture) in
    amd64) arch=amd64 ;; arm64) arch=arm64 ;; armhf) arch=arm ;; i386) arch=386 ;;
    *) arch=$(dpkg --print-architecture) ;;
  esac
  local o=$t/oci; rm -rf "$o"; mkdir -p "$o/blobs/sha256"
  local ld ls cd cs md ms
  ld=$(sha256sum "$t/rootfs.tar" | cut -d' ' -f1); ls=$(stat -c %s "$t/rootfs.tar")
  cp "$t/rootfs.tar" "$o/blobs/sha256/$ld"
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"podguard rt.sh from busybox-static"}]}' \
    "$arch" "$cmd" "$ld" >"$t/config.json"
  cd=$(sha256sum "$t/config.json" | cut -d' ' -f1); cs=$(stat -c %s "$t/config.json")
  mv "$t/config.json" "$o/blobs/sha256/$cd"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cd" "$cs" "$ld" "$ls" >"$t/manifest.json"
  md=$(sha256sum "$t/manifest.json" | cut -d' ' -f1); ms=$(stat -c %s "$t/manifest.json")
  mv "$t/manifest.json" "$o/blobs/sha256/$md"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"latest"}}]}' \
    "$md" "$ms" "$name" >"$o/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$o/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$o" -cf "$out" oci-layout index.json blobs
  rm -rf "$o"
}

# ---------------------------------------------------------------- node config

write_node_config() {
  local D=$1 id=$2
  cat >"$D/etc-containers/containers.conf" <<'EOF'
# podguard rt.sh: podman with the CNI backend, see rt.sh's header
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
# Debian's list plus NET_RAW: busybox ping needs a raw socket (it has no
# ICMP datagram fallback, so ping_group_range does not help); ctr's default
# spec has NET_RAW too.
default_capabilities = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
  "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID",
  "SYS_CHROOT"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = ["/opt/cni/bin"]
network_config_dir = "/etc/cni/net.d"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  cat >"$D/etc-containers/storage.conf" <<'EOF'
[storage]
driver = "overlay"
graphroot = "/var/lib/containers/storage"
runroot = "/run/containers/storage"
EOF
  printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$D/etc-containers/policy.json"
  printf 'unqualified-search-registries = []\n' >"$D/etc-containers/registries.conf"
  cat >"$D/containerd.toml" <<EOF
# podguard rt.sh: containerd of node $id (paths as seen in its mount ns)
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "/var/lib/containerd/opt"
EOF
  [[ ${PGRT_KUBELET:-} == 1 ]] || return 0
  # A kubelet's node: the CRI plugin on, its pods' networks from the node's
  # CNI dirs (as a kubeadm node has them), cgroupfs (no systemd here), the
  # sandbox image imported by node-up. restrict_oom_score_adj: kubelet asks
  # for negative OOM scores (system-node-critical pods: -997), which needs
  # CAP_SYS_RESOURCE, which this machine's root lacks.
  sed -i '/^disabled_plugins/d' "$D/containerd.toml"
  cat >>"$D/containerd.toml" <<EOF
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
  local kv
  for kv in "${KUBELET_SYSCTLS[@]}"; do
    mkdir -p "$D/sysctl/$(dirname "${kv%%=*}")"
    echo "${kv#*=}" >"$D/sysctl/${kv%%=*}"
  done
}

# The holder: PID of `sleep infinity` in its own mount ns, inside NETNS.
holder_script='
set -eu
D=$1 nsname=$2; shift 2
for b in "$@"; do mount --bind "$D/${b%%:*}" "${b#*:}"; done
: >"/run/netns/$nsname"
mount --bind /proc/self/ns/net "/run/netns/$nsname"
mount -t tmpfs -o mode=1777,size=64m pgrt-shm /dev/shm
if [ -d "$D/sysctl" ]; then
  (cd "$D/sysctl" && find . -type f) | while read -r f; do
    mount --bind "$D/sysctl/${f#./}" "/proc/sys/${f#./}"
  done
fi
mkdir -p "$D/cgroup-move"
mount --rbind /sys/fs/cgroup "$D/cgroup-move"
umount -l /sys
mount -t sysfs sysfs /sys
mount --move "$D/cgroup-move" /sys/fs/cgroup
rmdir "$D/cgroup-move" 2>/dev/null || true
readlink /proc/self/ns/mnt >"$D/mntns"
echo $$ >"$D/holder.pid"
exec sleep infinity
'

holder_pid() { # prints the holder pid if it is alive and is ours
  local D=$1 p
  p=$(cat "$D/holder.pid" 2>/dev/null) || return 1
  [[ -e /proc/$p && $(readlink "/proc/$p/ns/mnt" 2>/dev/null) == "$(cat "$D/mntns" 2>/dev/null)" ]] || return 1
  echo "$p"
}

containerd_pid() {
  local D=$1 p
  p=$(cat "$D/containerd.pid" 2>/dev/null) || return 1
  [[ -e /proc/$p && $(cat "/proc/$p/comm" 2>/dev/null) == containerd &&
     $(readlink "/proc/$p/ns/mnt" 2>/dev/null) == "$(cat "$D/mntns" 2>/dev/null)" ]] || return 1
  echo "$p"
}

node_env() { # env assignments for commands of node ID
  local id=$1
  echo "CONTAINERD_ADDRESS=/run/containerd/containerd.sock"
  echo "CONTAINERD_NAMESPACE=pgrt-$id"
}

run_in() { # run_in ID CMD... (no exec: returns the status)
  local id=$1; shift
  local D; D=$(node_dir "$id")
  local h; h=$(holder_pid "$D") || die "node $id is not up"
  local -a envs pre=(); mapfile -t envs < <(node_env "$id")
  [[ -n ${RT_TIMEOUT:-} ]] && pre=(timeout -k 5 "$RT_TIMEOUT")
  "${pre[@]}" nsenter --mount="/proc/$h/ns/mnt" --net="/proc/$h/ns/net" -- \
    env "${envs[@]}" /bin/sh -c 'cd "$0" 2>/dev/null || cd /; exec "$@"' "$PWD" "$@"
}

cmd_info() {
  local id=$1 D; D=$(node_dir "$id")
  [[ -d $D ]] || die "node $id: no $D"
  cat <<EOF
PGRT_NODE=$id
PGRT_NETNS=$(cat "$D/netns" 2>/dev/null)
PGRT_DIR=$D
PGRT_CNI_CONF_DIR=$D/etc-cni-net.d
PGRT_CNI_BIN_DIR=$D/opt-cni-bin
PGRT_CNI_STATE_DIR=$D/var-lib-cni
PGRT_RUN_PODGUARD=$D/run-podguard
PGRT_VAR_LIB_PODGUARD=$D/var-lib-podguard
PGRT_RUN_WIREGUARD=$D/run-wireguard
PGRT_HOLDER_PID=$(holder_pid "$D" || true)
PGRT_CONTAINERD_PID=$(containerd_pid "$D" || true)
PGRT_CONTAINERD_SOCK=$D/run-containerd/containerd.sock
PGRT_CONTAINERD_NAMESPACE=pgrt-$id
PGRT_IMAGE=$IMAGE
EOF
}

wait_for() { # wait_for SECONDS CMD...
  local n=$(($1 * 10)); shift
  while ! "$@" 2>/dev/null; do
    ((n-- > 0)) || return 1
    sleep 0.1
  done
}

cmd_node_up() {
  local id=${1:-} netns=${2:-}
  [[ -n $id && -n $netns ]] || die "usage: rt.sh node-up ID NETNS"
  local D; D=$(node_dir "$id")
  local nspath=$netns
  [[ $netns == */* ]] || nspath=/run/netns/$netns
  [[ -e $nspath ]] || die "netns $nspath does not exist (the caller creates it)"
  [[ -f $PGRT_CACHE/busybox-rootfs.tar && -f $PGRT_CACHE/busybox-oci.tar &&
     -f $PGRT_CACHE/pause-oci.tar ]] ||
    die "no image in $PGRT_CACHE (or one from an older rt.sh): run rt.sh setup"
  command -v podman >/dev/null && command -v containerd >/dev/null || die "run rt.sh setup"
  if [[ -e $D ]]; then
    holder_pid "$D" >/dev/null && die "node $id is already up ($D)"
    log "node $id: removing leftovers of an earlier run"
    cmd_node_down "$id"
  fi
  # shellcheck disable=SC2064 # expand now: locals are gone when the trap runs
  trap "node_up_exit '$id'" EXIT
  mkdir -p "$D"
  echo "$netns" >"$D/netns"
  local b
  for b in "${BINDS[@]}"; do
    mkdir -p "$D/${b%%:*}"
    [[ -d ${b#*:} ]] || mkdir -p "${b#*:}"   # empty mount point on the host
  done
  write_node_config "$D" "$id"

  setsid nsenter --net="$nspath" -- unshare --mount --propagation private -- \
    /bin/bash -c "$holder_script" holder "$D" "$(basename "$nspath")" "${BINDS[@]}" \
    </dev/null >"$D/holder.log" 2>&1 &
  disown $!   # node-down kills it; no "Killed" job notice from this shell
  wait_for 10 holder_pid "$D" >/dev/null || { cat "$D/holder.log" >&2; die "node $id: holder did not start"; }
  local h; h=$(holder_pid "$D")

  nsenter --mount="/proc/$h/ns/mnt" --net="/proc/$h/ns/net" -- \
    setsid containerd --config "$D/containerd.toml" </dev/null >"$D/containerd.log" 2>&1 &
  disown $!
  wait_for 30 run_in "$id" ctr version >/dev/null ||
    { tail -20 "$D/containerd.log" >&2; die "node $id: containerd did not come up"; }
  local p
  for p in $(ns_pids "$(cat "$D/mntns")"); do
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == containerd ]] && echo "$p" >"$D/containerd.pid"
  done
  containerd_pid "$D" >/dev/null || die "node $id: containerd pid not found"

  run_in "$id" podman import -q \
    --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["/bin/sh"]' \
    "$PGRT_CACHE/busybox-rootfs.tar" "$IMAGE" >/dev/null
  run_in "$id" ctr image import "$PGRT_CACHE/busybox-oci.tar" >/dev/null
  run_in "$id" ctr image ls -q | grep -qx "$IMAGE" || die "node $id: ctr image import gave no $IMAGE"
  if [[ ${PGRT_KUBELET:-} == 1 ]]; then
    # The CRI plugin's images live in containerd namespace k8s.io.
    run_in "$id" ctr -n k8s.io image import "$PGRT_CACHE/busybox-oci.tar" >/dev/null
    run_in "$id" ctr -n k8s.io image import "$PGRT_CACHE/pause-oci.tar" >/dev/null
    run_in "$id" ctr -n k8s.io image ls -q | grep -qx "$PAUSE_IMAGE" ||
      die "node $id: ctr image import gave no $PAUSE_IMAGE"
  fi
  trap - EXIT
  log "node $id up (netns $netns, holder $h)"
  cmd_info "$id"
}

node_up_exit() { # EXIT trap of node-up: clean up unless it succeeded
  local rc=$? id=$1
  trap - EXIT
  ((rc)) || return 0
  if [[ ${PGRT_KEEP:-} == 1 ]]; then
    log "node-up $id failed; kept $(node_dir "$id") (PGRT_KEEP=1)"
  else
    log "node-up $id failed; cleaning up"
    (cmd_node_down "$id") || true
  fi
  exit "$rc"
}

# ---------------------------------------------------------------- teardown

descendants() { # the given pids and every process below them
  local -A want=() ppid_of=()
  local p s line rest
  for p in "$@"; do want[$p]=1; done
  for s in /proc/[0-9]*/stat; do
    { read -r line <"$s"; } 2>/dev/null || continue
    p=${s#/proc/}; p=${p%/stat}
    rest=${line##*) }          # after "pid (comm) ": state ppid ...
    rest=${rest#* }
    ppid_of[$p]=${rest%% *}
  done
  local changed=1
  while ((changed)); do
    changed=0
    for p in "${!ppid_of[@]}"; do
      [[ -z ${want[$p]:-} && -n ${want[${ppid_of[$p]}]:-} ]] && { want[$p]=1; changed=1; }
    done
  done
  printf '%s\n' "${!want[@]}"
}

gone() { # a pid that no longer runs (absent or a zombie)
  [[ ! -e /proc/$1 ]] || grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

ns_pids() { # pids whose mount ns is MNTNS, never our own shell
  local mnt=$1 f pid
  for f in /proc/[0-9]*/ns/mnt; do
    pid=${f#/proc/}; pid=${pid%/ns/mnt}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    [[ $(readlink "$f" 2>/dev/null) == "$mnt" ]] && echo "$pid"
  done
}

cmd_node_down() {
  local id=${1:-}
  [[ -n $id ]] || die "usage: rt.sh node-down ID"
  local D; D=$(node_dir "$id")
  [[ -e $D ]] || { log "node $id: nothing to do"; return 0; }
  local h c
  if h=$(holder_pid "$D"); then
    # What drives containerd goes first (a kubelet would start the pods
    # again while they are removed).
    local p
    for p in $(ns_pids "$(cat "$D/mntns")"); do
      case $(cat "/proc/$p/comm" 2>/dev/null) in
        kubelet|kube-proxy) kill -KILL "$p" 2>/dev/null || true
                            wait_for 5 gone "$p" || log "node $id: pid $p does not die" ;;
      esac
    done
    if c=$(containerd_pid "$D"); then
      local ns t
      for ns in $(RT_TIMEOUT=20 run_in "$id" ctr namespaces ls -q 2>/dev/null); do
        for t in $(RT_TIMEOUT=20 run_in "$id" ctr -n "$ns" tasks ls -q 2>/dev/null); do
          RT_TIMEOUT=20 run_in "$id" ctr -n "$ns" tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
        done
        for t in $(RT_TIMEOUT=20 run_in "$id" ctr -n "$ns" tasks ls -q 2>/dev/null); do
          RT_TIMEOUT=20 run_in "$id" ctr -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || true
        done
        for t in $(RT_TIMEOUT=20 run_in "$id" ctr -n "$ns" containers ls -q 2>/dev/null); do
          RT_TIMEOUT=20 run_in "$id" ctr -n "$ns" containers rm "$t" >/dev/null 2>&1 || true
        done
      done
    fi
    RT_TIMEOUT=60 run_in "$id" podman rm -f -a -t 0 >/dev/null 2>&1 ||
      log "node $id: podman rm -f -a failed (processes are killed below)"
  fi
  if c=$(containerd_pid "$D"); then
    kill -TERM "$c" 2>/dev/null || true
    wait_for 5 gone "$c" || kill -KILL "$c" 2>/dev/null || true
  fi
  local mnt; mnt=$(cat "$D/mntns" 2>/dev/null || true)
  if [[ -n $mnt ]]; then
    local -a pids
    mapfile -t pids < <(ns_pids "$mnt")
    if ((${#pids[@]})); then
      mapfile -t pids < <(descendants "${pids[@]}")
      kill -KILL "${pids[@]}" 2>/dev/null || true
      local p
      for p in "${pids[@]}"; do
        wait_for 5 gone "$p" || log "node $id: pid $p does not die"
      done
    fi
  fi
  # cgroups the node's containerd made (/pgrt-ID/<container> in each v1
  # hierarchy, or under the v2 root); podman's are per container and go with
  # podman rm.
  local cg
  for cg in /sys/fs/cgroup/*/"pgrt-$id" /sys/fs/cgroup/"pgrt-$id"; do
    [[ -d $cg ]] || continue
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if grep -q " $D" /proc/self/mountinfo; then   # never expected: binds live in the holder ns
    awk -v d="$D" '$5 ~ "^"d {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  fi
  rm -rf --one-file-system "$D"
  log "node $id down"
}

task_status() { run_in "$1" ctr tasks ls 2>/dev/null | awk -v c="$2" '$1 == c { print $3 }'; }
task_is() { [[ $(task_status "$1" "$2") == "$3" ]]; }
task_not_live() { local s; s=$(task_status "$1" "$2"); [[ -z $s || $s == STOPPED ]]; }

cmd_ctr_run_bg() {
  local id=${1:-} cid=${2:-}
  [[ -n $id && -n $cid && $# -ge 4 ]] || die "usage: rt.sh ctr-run-bg ID CTR [FLAGS] IMAGE CTR [CMD...]"
  shift 2
  local D; D=$(node_dir "$id")
  holder_pid "$D" >/dev/null || die "node $id is not up"
  setsid "$SELF" in "$id" -- ctr run --cni "$@" </dev/null >"$D/ctr-run-$cid.log" 2>&1 &
  echo $! >"$D/ctr-run-$cid.pid"
  disown $!
  if ! wait_for 30 task_is "$id" "$cid" RUNNING; then
    cat "$D/ctr-run-$cid.log" >&2
    die "node $id: task $cid is not running"
  fi
}

cmd_ctr_stop() {
  local id=${1:-} cid=${2:-} sig=${3:-SIGKILL}
  [[ -n $id && -n $cid ]] || die "usage: rt.sh ctr-stop ID CTR [SIGNAL]"
  local D; D=$(node_dir "$id")
  run_in "$id" ctr tasks kill -s "$sig" "$cid" >/dev/null 2>&1 || true
  local p; p=$(cat "$D/ctr-run-$cid.pid" 2>/dev/null || true)
  if [[ -n $p ]]; then
    wait_for 30 gone "$p" || die "node $id: ctr run of $cid did not finish"
    rm -f "$D/ctr-run-$cid.pid"
  else   # a `ctr run -d` task: no DEL will happen
    wait_for 10 task_not_live "$id" "$cid" || true
    run_in "$id" ctr tasks rm -f "$cid" >/dev/null 2>&1 || true
  fi
  run_in "$id" ctr containers rm "$cid" >/dev/null
}

cmd_gc() {
  local d
  for d in "$PGRT_RUN"/*/; do
    [[ -d $d ]] || continue
    cmd_node_down "$(basename "$d")"
  done
}

# ---------------------------------------------------------------- main

main() {
  local cmd=${1:-}; shift || true
  case $cmd in
    setup) cmd_setup ;;
    node-up) cmd_node_up "$@" ;;
    node-down) cmd_node_down "$@" ;;
    info) cmd_info "$@" ;;
    gc) cmd_gc ;;
    ctr-run-bg) cmd_ctr_run_bg "$@" ;;
    ctr-stop) cmd_ctr_stop "$@" ;;
    in)
      local id=${1:-}; shift || true
      [[ ${1:-} == -- ]] && shift
      (($#)) || die "usage: rt.sh in ID [--] CMD..."
      run_in "$id" "$@" ;;
    podman) local id=${1:-}; shift || true; run_in "$id" podman "$@" ;;
    ctr) local id=${1:-}; shift || true; run_in "$id" ctr "$@" ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//' | head -40 >&2; exit 2 ;;
  esac
}

main "$@"
