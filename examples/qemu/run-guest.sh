#!/usr/bin/env bash
# Boots a tiny Linux guest under QEMU whose serial console and VNC display
# consolegate can serve: a Debian kernel (downloaded, never installed) and a
# busybox initramfs built here, with a shell on the serial console.
#
#   examples/qemu/run-guest.sh [options]
#
#   --workdir DIR     kernel, initramfs and sockets (default /tmp/consolegate-qemu)
#   --serial SPEC     telnet:HOST:PORT (default telnet:127.0.0.1:4555; break works)
#                     or unix:PATH (QEMU's chardev socket)
#   --vnc SPEC        unix:PATH (default unix:WORKDIR/vnc.sock) or HOST:DISPLAY (port 5900+DISPLAY)
#   --kernel-package  Debian package (default: what linux-image-cloud-amd64 depends on)
#   --kvm             use KVM when it really works (default: TCG software emulation)
#   --prepare         only fetch the kernel and build the initramfs, then exit
#
# Needs: qemu-system-x86, busybox-static, apt-get/dpkg-deb (Debian or Ubuntu).
# The matching gateway config is examples/qemu/gateway.toml.
set -euo pipefail

workdir=/tmp/consolegate-qemu
serial=telnet:127.0.0.1:4555
vnc=""
kernel_package=""
use_kvm=no
prepare_only=no
while [ $# -gt 0 ]; do
    case "$1" in
        --workdir) workdir=$2; shift 2 ;;
        --serial) serial=$2; shift 2 ;;
        --vnc) vnc=$2; shift 2 ;;
        --kernel-package) kernel_package=$2; shift 2 ;;
        --kvm) use_kvm=yes; shift ;;
        --prepare) prepare_only=yes; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run-guest.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
[ -n "$vnc" ] || vnc="unix:$workdir/vnc.sock"

need() { command -v "$1" >/dev/null || { echo "run-guest.sh: $1 not found; install $2" >&2; exit 1; }; }

fetch_kernel() {
    [ -s "$workdir/vmlinuz" ] && return
    need apt-get apt
    need dpkg-deb dpkg
    if [ -z "$kernel_package" ]; then
        kernel_package=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
        [ -n "$kernel_package" ] || { echo "run-guest.sh: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
    fi
    echo "run-guest.sh: downloading $kernel_package (not installing it)" >&2
    rm -rf "$workdir/download" && mkdir -p "$workdir/download"
    (cd "$workdir/download" && apt-get download "$kernel_package" >/dev/null 2>&1) \
        || { echo "run-guest.sh: apt-get download $kernel_package failed" >&2; exit 1; }
    dpkg-deb -x "$workdir"/download/*.deb "$workdir/download/root"
    cp "$workdir"/download/root/boot/vmlinuz-* "$workdir/vmlinuz.tmp"
    basename "$workdir"/download/root/boot/vmlinuz-* | sed 's/^vmlinuz-//' > "$workdir/kernel-release"
    rm -rf "$workdir/download"
    mv "$workdir/vmlinuz.tmp" "$workdir/vmlinuz"
}

build_initramfs() {
    [ -s "$workdir/initramfs.gz" ] && [ "$workdir/initramfs.gz" -nt "$0" ] && return
    local busybox
    busybox=$(command -v busybox || true)
    [ -n "$busybox" ] || { echo "run-guest.sh: busybox not found; install busybox-static" >&2; exit 1; }
    if ldd "$busybox" >/dev/null 2>&1; then
        echo "run-guest.sh: $busybox is dynamically linked; install busybox-static" >&2
        exit 1
    fi
    local root="$workdir/initramfs"
    rm -rf "$root"
    mkdir -p "$root"/{bin,dev,proc,sys,etc,root,tmp}
    cp "$busybox" "$root/bin/busybox"
    cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root PS1='guest# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
hostname consolegate-guest
echo 1 > /proc/sys/kernel/sysrq
echo "consolegate guest ready: $(uname -r)"
# A shell on the console (ttyS0, the last console= on the command line).
while true; do
    setsid cttyhack sh
    echo "shell exited; starting another"
done
INIT
    chmod +x "$root/init"
    (cd "$root" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -9 > "$workdir/initramfs.gz.tmp"
    mv "$workdir/initramfs.gz.tmp" "$workdir/initramfs.gz"
}

fetch_kernel
build_initramfs
if [ "$prepare_only" = yes ]; then
    echo "kernel:    $workdir/vmlinuz ($(cat "$workdir/kernel-release"))"
    echo "initramfs: $workdir/initramfs.gz"
    exit 0
fi

need qemu-system-x86_64 qemu-system-x86
case "$serial" in
    telnet:*)
        hostport=${serial#telnet:}
        chardev="socket,id=ser0,host=${hostport%:*},port=${hostport##*:},server=on,wait=off,telnet=on" ;;
    unix:*)
        chardev="socket,id=ser0,path=${serial#unix:},server=on,wait=off" ;;
    *) echo "run-guest.sh: --serial must be telnet:HOST:PORT or unix:PATH" >&2; exit 2 ;;
esac
accel=tcg
if [ "$use_kvm" = yes ] && [ -w /dev/kvm ]; then
    # /dev/kvm can exist without working: QEMU fails at once if it cannot use it,
    # and otherwise sits paused (-S) until the timeout stops it (status 124).
    status=0
    timeout 3 qemu-system-x86_64 -accel kvm -machine pc -nodefaults -display none \
        -monitor none -S >/dev/null 2>&1 || status=$?
    if [ "$status" = 124 ]; then accel=kvm; else echo "run-guest.sh: KVM unusable here; using TCG" >&2; fi
fi
echo "run-guest.sh: booting $(cat "$workdir/kernel-release") under $accel; serial $serial, VNC $vnc" >&2
exec qemu-system-x86_64 \
    -nodefaults -no-user-config -machine pc -accel "$accel" -m 256M -smp 1 \
    -kernel "$workdir/vmlinuz" -initrd "$workdir/initramfs.gz" \
    -append "console=tty0 console=ttyS0,115200 sysrq_always_enabled panic=-1" \
    -chardev "$chardev" -serial chardev:ser0 \
    -vga std -vnc "$vnc" \
    -no-reboot
