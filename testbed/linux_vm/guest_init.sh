#!/bin/sh
# /init of the testbed's Linux guest (busybox sh). Parameters come from /etc/nsdt.conf, written per
# run by testbed.linux_vm (the appended cpio archive). Every step prints one "@step ..." line on the
# console (ttyS0) for the host to parse; the sampler streams /proc on ttyS1.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
. /etc/nsdt.conf
step() { echo "@step $*"; }
fail() { echo "@fail $*"; sleep 1; poweroff -f; }
step boot uname=$(uname -r) memtotal_kb=$(grep MemTotal /proc/meminfo | sed 's/[^0-9]//g')

# sampler first: /proc is readable from now on, even if something below hangs
nsdt-guest sampler /dev/ttyS1 "$NSDT_SAMPLE_MS" &

n=0
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m" 2>/dev/null || echo "@warn insmod $m failed"
    n=$((n + 1))
done
step modules loaded=$n

# the scenario's memory physics
sysctl -qw vm.min_free_kbytes="$NSDT_MIN_FREE_KBYTES"
sysctl -qw vm.watermark_scale_factor="$NSDT_WATERMARK_SCALE_FACTOR"
# no watermark boosting (6.1 adds watermark_boost to every watermark after fragmentation events):
# the scenario's min/low/high are the ones that hold, as in the agent
sysctl -qw vm.watermark_boost_factor=0
[ -n "$NSDT_DEV_WEIGHT" ] && sysctl -qw net.core.dev_weight="$NSDT_DEV_WEIGHT"
[ -n "$NSDT_UDP_MEM" ] && sysctl -qw net.ipv4.udp_mem="$NSDT_UDP_MEM"
sysctl -qw net.core.rmem_max="$NSDT_NOISE_RCVBUF"
sysctl -qw kernel.hung_task_timeout_secs="$NSDT_HUNG_TASK_S" 2>/dev/null
sysctl -qw kernel.hung_task_warnings=-1 2>/dev/null
step sysctl min_free_kbytes=$(cat /proc/sys/vm/min_free_kbytes) watermark_scale_factor=$(cat /proc/sys/vm/watermark_scale_factor) udp_mem="$(cat /proc/sys/net/ipv4/udp_mem)"

ip link set lo up
ip link set eth0 up || fail net no eth0
ip addr add "$NSDT_ADDR" dev eth0
[ -n "$NSDT_NAS_MAC" ] && nsdt-guest neigh eth0 "$NSDT_NAS" "$NSDT_NAS_MAC"
[ -n "$NSDT_NOISE_MAC" ] && nsdt-guest neigh eth0 "$NSDT_NOISE" "$NSDT_NOISE_MAC"
step net addr=$NSDT_ADDR driver=$(basename $(readlink /sys/class/net/eth0/device/driver) 2>/dev/null)

nsdt-guest mount "$NSDT_NAS:$NSDT_EXPORT" /mnt "$NSDT_MOUNT_OPTS" || fail mount
step mounted opts="$(grep ' /mnt ' /proc/mounts | sed 's/.* nfs //')"

if [ "$NSDT_CONSUMER" = swap ]; then
    mkswap "/mnt/$NSDT_IMAGE" >/dev/null 2>&1 || fail mkswap
    swapon "/mnt/$NSDT_IMAGE" || fail swapon
    step swapon $(tail -n +2 /proc/swaps)
fi

[ "$NSDT_NOISE_SOCKETS" -gt 0 ] && nsdt-guest noise "$NSDT_NOISE_PORT_BASE" "$NSDT_NOISE_SOCKETS" "$NSDT_NOISE_RCVBUF" &
sleep 1
step workload consumer=$NSDT_CONSUMER pages=$NSDT_WORKLOAD_PAGES min_free_kbytes=$(cat /proc/sys/vm/min_free_kbytes)
if [ "$NSDT_CONSUMER" = swap ]; then
    nsdt-guest workload "$NSDT_WORKLOAD_PAGES" "$NSDT_SEED"
else
    nsdt-guest mmapfile "/mnt/$NSDT_IMAGE" "$NSDT_WORKLOAD_PAGES" "$NSDT_SEED"
fi
step workload-exit rc=$?
# let the sampler show the settled state, then stop
sleep "$NSDT_SETTLE_S"
step done swap="$(tail -n +2 /proc/swaps)"
poweroff -f
