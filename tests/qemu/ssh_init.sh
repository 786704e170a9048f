#!/bin/busybox sh
# The SSH guest's /init (tests/qemu/ssh_guest.py): node1 of the proof's topology with
# every module loaded, reachable over SSH on the host's 127.0.0.1 (qemu's user network,
# restricted: the guest reaches nothing outside). svcops apply pushes to it from the
# host; the host powers it off by creating /tmp/poweroff (or it stops after 30 min).
. /prelude.sh
say "BOOTED kernel=$(uname -r)"
while read -r m; do
    insmod "/modules/$m" 2>/tmp/insmod.err || say "MODULE-FAIL $m $(head -c 200 /tmp/insmod.err)"
done < /modules/order
# sshd runs each command through root's shell: dash, as on Debian (busybox's sh would
# run its own `ip` applet rather than iproute2's).
ln -sf /usr/bin/dash /bin/sh
/usr/sbin/ip link set lo up
/usr/sbin/ip addr add 10.0.2.15/24 dev eth0 && /usr/sbin/ip link set eth0 up || say "NET-FAIL"
. /topology.sh
mkdir -p /run/sshd /var/empty /root/.ssh
chmod 755 /run/sshd && chmod 700 /root/.ssh && chmod 600 /etc/ssh/ssh_host_ed25519_key
/usr/sbin/sshd -f /etc/ssh/sshd_config -E /tmp/sshd.log || say "SSHD-FAIL $(head -c 300 /tmp/sshd.log)"
say "READY"
i=0
while [ ! -e /tmp/poweroff ] && [ $i -lt 1800 ]; do
    sleep 1
    i=$((i + 1))
done
finish
