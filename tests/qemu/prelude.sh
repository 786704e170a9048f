# Sourced first by every guest /init (tests/qemu/init.sh, benchmarks/ipvs_qemu.py):
# busybox applets, the pseudo file systems, /run/netns for `ip netns`, and the two
# helpers every line for the host goes through (each starts with "SVCOPS ").
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /bin
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /var/run
ln -s /run/netns /var/run/netns 2>/dev/null

say() { echo "SVCOPS $*"; }
finish() { say "DONE"; sync; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }
# Debian's ipvsadm-save and ipvsadm-restore are bash scripts: busybox sh runs them.
printf '#!/bin/busybox sh\nexec /bin/busybox sh "$@"\n' > /bin/bash; chmod +x /bin/bash
