#!/bin/busybox sh
# Chaser initramfs /init (PID 1, busybox sh). Loads the virtio/erofs modules,
# answers the KVM probe, brings up slirp networking, mounts the guest OS disk
# (found by its virtio serial) and switch_roots into the agent under tini.
# Placeholders (at-sign NAME at-sign) are filled in at build time from chaser.agent.protocol.
export PATH=/bin
export HOME=/root

log() { echo "chaser-init: $*"; }
die() {
    log "FATAL: $*"
    # Never hang: the host sees QEMU exit (-no-reboot) and reads this log.
    sleep 1
    reboot -f
    exit 1
}

mkdir -p /proc /sys /dev /run
mount -t proc proc /proc || die "mount /proc"
mount -t sysfs sysfs /sys || die "mount /sys"
mount -t devtmpfs devtmpfs /dev || die "mount /dev"
# The kernel may have had no /dev/console when it started us; now it does.
exec </dev/console >/dev/console 2>&1
log "started"

cmdline=" $(cat /proc/cmdline) "
case "$cmdline" in
*" @CMDLINE_PROBE@=1 "*)
    # KVM probe: reaching userspace is the proof; skip everything else.
    echo "@PROBE_MARKER@"
    reboot -f
    exit 0
    ;;
esac

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/modules/$mod" || log "insmod $mod failed"
done </modules/order
log "modules loaded"

ip link set lo up
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0 || log "ip addr failed"
    ip route add default via 10.0.2.2 || log "ip route failed"
else
    log "no eth0"
fi

find_disk() {
    for s in /sys/block/vd*/serial; do
        [ -r "$s" ] || continue
        if [ "$(cat "$s")" = "$1" ]; then
            d=${s%/serial}
            echo "/dev/${d##*/}"
            return 0
        fi
    done
    return 1
}

osdev=""
i=0
while [ $i -lt 50 ]; do
    osdev=$(find_disk "@OS_DISK_SERIAL@") && break
    sleep 0.1
    i=$((i + 1))
done
[ -n "$osdev" ] || die "no disk with serial @OS_DISK_SERIAL@"
[ -b "$osdev" ] || die "$osdev is not a block device"
log "os disk $osdev"

mkdir -p /newroot
mount -t erofs -o ro "$osdev" /newroot || die "mount $osdev"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /newroot/run || die "mount /run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || die "mount /tmp"
if [ -d /newroot/var/tmp ]; then
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/var/tmp || log "mount /var/tmp failed"
fi
# The agent lives in the initramfs so changing it does not rebuild the OS disk.
mount -t tmpfs -o mode=0755 tmpfs /newroot/opt/chaser || die "mount /opt/chaser"
cp -a /agent/chaser_agent /newroot/opt/chaser/ || die "copy agent"

mount --move /dev /newroot/dev || die "move /dev"
mount --move /proc /newroot/proc || die "move /proc"
mount --move /sys /newroot/sys || die "move /sys"

log "switch_root"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
exec switch_root /newroot /usr/bin/tini -- /usr/bin/env PYTHONPATH=/opt/chaser PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 /usr/bin/python3 -m chaser_agent
die "switch_root failed"
