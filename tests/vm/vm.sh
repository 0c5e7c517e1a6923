#!/usr/bin/env bash
# A real Linux kernel with WireGuard, for the tests: Debian 12's own kernel
# package booted under QEMU (software emulation), with this machine's /usr
# and this checkout shared read-only over 9p, so the VM runs the checkout's
# own binaries and the host's ip, wg, nft, tcpdump on a kernel that has the
# wireguard module (the host has none).
#
#   vm.sh setup                 install qemu, fetch and unpack the kernel
#                               package, build the initramfs (idempotent)
#   vm.sh run OUT -- CMD...     boot, run CMD inside (cwd = the checkout,
#                               PODGUARD_IN_VM=1), power off; CMD's output in
#                               OUT/output.log, the console in OUT/console.log;
#                               exits with CMD's exit code
#
# Cache (outside the repo): PODGUARD_VM_CACHE, default /var/cache/podguard-vm.
# The run is bounded by PODGUARD_VM_TIMEOUT seconds (default 900).
set -euo pipefail

CACHE=${PODGUARD_VM_CACHE:-/var/cache/podguard-vm}
HERE=$(cd "$(dirname "$0")/../.." && pwd)

die() { echo "vm.sh: $*" >&2; exit 1; }

kernel_version() { ls "$CACHE/root/lib/modules" 2>/dev/null | head -1; }

setup() {
  [ "$(id -u)" -eq 0 ] || die "setup needs root (apt-get)"
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
  command -v depmod >/dev/null || need+=(kmod)
  command -v cpio >/dev/null || need+=(cpio)
  if ((${#need[@]})); then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || die "could not install ${need[*]}"
  fi
  mkdir -p "$CACHE"
  if [ -z "$(kernel_version)" ]; then
    # The kernel linux-image-amd64 points at today, downloaded (not installed).
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || die "apt-cache knows no linux-image-amd64 (apt-get update?)"
    (cd "$CACHE" && rm -f linux-image-*.deb && apt-get download "$pkg" >/dev/null 2>&1) \
      || die "apt-get download $pkg failed"
    rm -rf "$CACHE/root.tmp" && mkdir "$CACHE/root.tmp"
    dpkg-deb -x "$CACHE"/linux-image-*.deb "$CACHE/root.tmp"
    depmod -b "$CACHE/root.tmp" "$(ls "$CACHE/root.tmp/lib/modules")"
    rm -rf "$CACHE/root" && mv "$CACHE/root.tmp" "$CACHE/root"
  fi
  [ -f "$CACHE/initramfs.cpio.gz" ] && [ "$CACHE/initramfs.cpio.gz" -nt "$0" ] && return 0
  build_initramfs
}

build_initramfs() {
  local kv ir
  kv=$(kernel_version)
  ir=$CACHE/initramfs.tmp
  rm -rf "$ir" && mkdir -p "$ir"/{bb,m,proc,sys,dev,run,tmp,usr,var,root,work,out,etc}
  cp /bin/busybox "$ir/bb/busybox"
  for a in sh mount umount insmod mkdir ln cat echo poweroff sleep mknod chmod; do
    ln -s busybox "$ir/bb/$a"
  done
  # Merged /usr, as on the host: everything else comes from the host's /usr.
  for d in bin sbin lib lib64; do ln -s "usr/$d" "$ir/$d"; done
  ln -s ../run "$ir/var/run"
  # 9p and virtio, in dependency order, straight from the kernel package.
  : > "$ir/m/order"
  for m in virtio_pci 9pnet_virtio 9p; do
    modprobe -d "$CACHE/root" -S "$kv" --show-depends "$m" | awk '{print $2}'
  done | awk '!seen[$0]++' | while read -r f; do
    cp "$f" "$ir/m/"
    basename "$f" >> "$ir/m/order"
  done
  # A minimal /etc: users, hosts, the dynamic loader's cache, alternatives.
  cp /etc/passwd /etc/group /etc/hosts /etc/nsswitch.conf /etc/ld.so.cache "$ir/etc/"
  cp -a /etc/alternatives "$ir/etc/"
  [ -d /etc/iproute2 ] && cp -a /etc/iproute2 "$ir/etc/"
  # The CA bundle: the agent's Kubernetes client (rustls with the system's
  # roots) refuses to start without one, even for a plain-HTTP lab server.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$ir/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$ir/etc/ssl/certs/"
  fi
  echo "podguard-vm" > "$ir/etc/hostname"
  cat > "$ir/init" <<'EOF'
#!/bb/sh
export PATH=/bb
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
ln -s /proc/self/fd /dev/fd
ln -s /proc/self/fd/0 /dev/stdin
ln -s /proc/self/fd/1 /dev/stdout
ln -s /proc/self/fd/2 /dev/stderr
for m in $(cat /m/order); do insmod /m/$m || echo "vm: insmod $m failed"; done
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $o,ro usr /usr || { echo "vm: no /usr"; poweroff -f; }
mount -t 9p -o $o,ro mods /usr/lib/modules
mount -t 9p -o $o out /out
# The scratch file systems first, the checkout on top: a checkout under
# /tmp (a CI clone) must not be hidden by the tmpfs.
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /root
mkdir -p /var/lib /dev/pts /dev/shm /dev/net
mount -t tmpfs tmpfs /var/lib
work=$(cat /out/workdir)
mkdir -p "$work"
mount -t 9p -o $o,ro work "$work" || echo "vm: cannot mount the checkout at $work"
mount -t 9p -o $o target "$work/target"
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
[ -e /dev/net/tun ] || mknod /dev/net/tun c 10 200
echo /sbin/modprobe > /proc/sys/kernel/modprobe
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
export HOME=/root PODGUARD_IN_VM=1 RUST_BACKTRACE=1
/usr/sbin/modprobe wireguard
cd "$work"
echo "vm: running on $(/usr/bin/uname -r)"
/usr/bin/bash /out/cmd > /out/output.log 2>&1
echo $? > /out/rc
echo "vm: done, rc $(cat /out/rc)"
/bb/sync 2>/dev/null
poweroff -f
EOF
  chmod +x "$ir/init"
  (cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) > "$CACHE/initramfs.cpio.gz.tmp"
  mv "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
  rm -rf "$ir"
}

run() {
  local out=$1; shift
  [ "${1:-}" = "--" ] && shift
  [ $# -gt 0 ] || die "run: no command"
  [ -f "$CACHE/initramfs.cpio.gz" ] || die "no VM image in $CACHE: run 'bash tests/vm/vm.sh setup' first"
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run 'bash tests/vm/vm.sh setup'"
  local kv
  kv=$(kernel_version)
  mkdir -p "$out"
  rm -f "$out/rc" "$out/output.log" "$out/console.log"
  echo "$HERE" > "$out/workdir"
  printf '%q ' "$@" > "$out/cmd"
  echo >> "$out/cmd"
  local share="security_model=none,readonly=on"
  set +e
  timeout "${PODGUARD_VM_TIMEOUT:-900}" qemu-system-x86_64 \
    -machine q35 -accel tcg,thread=multi -cpu max -smp 2 -m 3072 \
    -nographic -no-reboot -nic none \
    -kernel "$CACHE/root/boot/vmlinuz-$kv" -initrd "$CACHE/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet" \
    -virtfs "local,path=/usr,mount_tag=usr,$share" \
    -virtfs "local,path=$CACHE/root/lib/modules,mount_tag=mods,$share" \
    -virtfs "local,path=$HERE,mount_tag=work,$share" \
    -virtfs "local,path=$HERE/target,mount_tag=target,security_model=none" \
    -virtfs "local,path=$out,mount_tag=out,security_model=none" \
    > "$out/console.log" 2>&1 < /dev/null
  local q=$?
  set -e
  [ $q -eq 124 ] && die "the VM did not finish within ${PODGUARD_VM_TIMEOUT:-900} s; console: $out/console.log"
  [ -f "$out/rc" ] || die "the VM ended (qemu exit $q) without running the command; console: $out/console.log"
  return "$(cat "$out/rc")"
}

case "${1:-}" in
  setup) setup ;;
  run) shift; run "$@" ;;
  *) die "usage: vm.sh setup | vm.sh run OUT -- CMD..." ;;
esac
