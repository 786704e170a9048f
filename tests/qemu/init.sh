#!/bin/busybox sh
# The guest's /init: load the modules, check every golden payload with the real
# parsers (each scenario in its own network namespace), then apply the proof site's
# payloads on this "node1", start backends and a client, send requests, and report.
# Every line meant for the host starts with "SVCOPS ". Then power off.
. /prelude.sh
# busybox sh runs its own applets before PATH: iproute2 is called by its full path.

say "BOOTED kernel=$(uname -r)"
while read -r m; do
    insmod "/modules/$m" 2>/tmp/insmod.err || say "MODULE-FAIL $m $(head -c 200 /tmp/insmod.err)"
done < /modules/order
say "MODULES loaded=$(wc -l < /modules/order)"

# --- every golden scenario through ipset's, iptables-restore's and ipvsadm-restore's parsers
for d in /payload/golden/*; do
    n=$(basename "$d")
    ns="g-$n"
    /usr/sbin/ip netns add "$ns"
    # IPVS takes a real server only if it is routable: give the namespace a default route.
    /usr/sbin/ip netns exec "$ns" sh -c '/usr/sbin/ip link set lo up; /usr/sbin/ip link add eth0 type dummy; /usr/sbin/ip link set eth0 up; /usr/sbin/ip route add default dev eth0'
    /usr/sbin/ip netns exec "$ns" sh -c "ipset restore < $d/ipset && iptables-restore --noflush < /payload/iptables && sh /usr/sbin/ipvsadm-restore < $d/ipvsadm" > /tmp/err 2>&1
    rc=$?
    say "GOLDEN $n rc=$rc"
    sed "s/^/SVCOPS ERR $n /" /tmp/err
    /usr/sbin/ip netns exec "$ns" sh /usr/sbin/ipvsadm-save -n | sed "s/^/SVCOPS IPVS $n /"
    /usr/sbin/ip netns del "$ns"
done

# --- the proof: this guest is node1 (10.0.0.11) of tests/qemu/harness.py's site
P=/payload/proof
/usr/sbin/ip link set lo up
# svcops's cold apply, step by step (svcops.render.ipvs_sync.ipvs_plan on a clean node)
sh -e $P/prepare || say "APPLY-FAIL prepare"
/usr/sbin/ip -batch $P/addresses || say "APPLY-FAIL addresses"
say "KEPT $(tr '\n' ' ' < /etc/svcops/ipvs-sysctls.before)"
while read -r k; do say "SYSCTL $k=$(sysctl -n "$k")"; done < $P/sysctl-keys
ipset restore < $P/ipset || say "APPLY-FAIL ipset"
iptables-restore --noflush < $P/iptables || say "APPLY-FAIL iptables"
ipvsadm -R < $P/ipvsadm || say "APPLY-FAIL ipvsadm"
ipvsadm -S -n | sed "s/^/SVCOPS PROOF-IPVS /"

. /topology.sh
# probe LABEL COUNT WHERE ADDRESS PORT: /tmp/get COUNT times; WHERE is "node" (this
# namespace) or a namespace.
probe() {
    label=$1; count=$2; where=$3; addr=$4; port=$5
    i=0
    while [ $i -lt "$count" ]; do
        i=$((i + 1))
        if [ "$where" = node ]; then
            out=$(/tmp/get "$addr" "$port")
        else
            out=$(/usr/sbin/ip netns exec "$where" /tmp/get "$addr" "$port")
        fi
        say "PROBE $label $i ${out:-<nothing>}"
    done
}
while read -r label count where addr port; do
    [ -n "$label" ] && probe "$label" "$count" "$where" "$addr" "$port"
done < $P/probes
ipvsadm -L -n --stats | sed "s/^/SVCOPS STATS /"
ipvsadm -L -n -c | sed "s/^/SVCOPS CONNS /"

# --- an update, as svcops apply runs it (svcops.render.ipvs_sync.ipvs_plan): from the proof
# site to tests/qemu/harness.py's update_site, on this live node
U=/payload/update
# UDP flows from the client to the UDP service first (busybox's tftp: a new source port
# each time, scheduled round robin over both real servers), so that the update finds
# conntrack entries pointing at the real server it removes.
# One after the other, each killed after a second (no background jobs: a `wait` in this
# PID 1 shell once hung the whole guest).
for i in 1 2 3 4 5 6; do
    /usr/sbin/ip netns exec client timeout -s KILL 1 tftp -g -r x -l /dev/null 10.96.0.15 5353 >/dev/null 2>&1
done
conntrack -L -p udp --orig-dst 10.96.0.15 2>/dev/null | sed "s/^/SVCOPS CT before /"
# This kernel (>= 5.9) with svcops's net.ipv4.vs.expire_nodest_conn=1 expires the
# connections of a removed real server by itself, conntrack entries included; turned off
# here so that what is proven is svcops's own cleanup (older kernels, and flows made
# while a service had no real server, need it).
sysctl -q -w net.ipv4.vs.expire_nodest_conn=0
sh $U/prepare || say "APPLY-FAIL update-prepare"
[ ! -s $U/addresses ] || /usr/sbin/ip -batch $U/addresses || say "APPLY-FAIL update-addresses"
ipset restore < $U/ipset || say "APPLY-FAIL update-ipset"
[ -s $U/iptables ] && { iptables-restore --noflush < $U/iptables || say "APPLY-FAIL update-iptables"; }
ipvsadm -R < $U/ipvsadm || say "APPLY-FAIL update-ipvsadm"
[ ! -s $U/finish ] || /usr/sbin/ip -batch $U/finish || say "APPLY-FAIL update-finish"
sh $U/conntrack > /tmp/ct.out 2>&1 || say "APPLY-FAIL update-conntrack $(head -c 300 /tmp/ct.out | tr '\n' ' ')"
conntrack -L -p udp --orig-dst 10.96.0.15 2>/dev/null | sed "s/^/SVCOPS CT after /"
sysctl -q -w net.ipv4.vs.expire_nodest_conn=1
ipvsadm -S -n | sed "s/^/SVCOPS UPDATE-IPVS /"
uprobe() {
    label=$1; count=$2; addr=$3; port=$4
    i=0
    while [ $i -lt "$count" ]; do
        i=$((i + 1))
        out=$(/usr/sbin/ip netns exec client /tmp/get "$addr" "$port")
        say "UPDATE-PROBE $label $i ${out:-<nothing>}"
    done
}
uprobe added 6 10.96.0.20 80
uprobe lonely-gone 2 10.96.0.13 80
uprobe web-local-node-port 6 10.0.0.11 30080

# --- leaving IPVS mode (svcops.render.ipvs_sync.ipvs_removal): svcops's chains first, then
# its sets, virtual servers and the dummy interface
R=/payload/removal
iptables-restore --noflush < $R/iptables || say "APPLY-FAIL removal-iptables"
ipset restore < $R/ipset || say "APPLY-FAIL removal-ipset"
ipvsadm -R < $R/ipvsadm || say "APPLY-FAIL removal-ipvsadm"
/usr/sbin/ip link del svcops-ipvs0 || say "APPLY-FAIL removal-link"
sh -e $R/sysctls || say "APPLY-FAIL removal-sysctls"
ipvsadm -S -n | sed "s/^/SVCOPS REMOVED ipvs /"
ipset list -n | sed "s/^/SVCOPS REMOVED sets /"
/usr/sbin/ip -o link show | sed "s/^/SVCOPS REMOVED links /"
iptables-save | grep SVCOPS | sed "s/^/SVCOPS REMOVED iptables /"
for k in net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce; do say "REMOVED sysctl $k=$(sysctl -n $k)"; done
[ -e /etc/svcops/ipvs-sysctls.before ] && say "REMOVED files /etc/svcops/ipvs-sysctls.before"

# --- boot: on this node without svcops's IPVS state (as after a reboot), the files svcops
# persists for the updated site and its restore script (run twice: it is idempotent).
# The script runs in this shell with `ip` as iproute2's (busybox's applet comes first).
cp -a /payload/boot/etc/. /etc/
for run in 1 2; do
    ( ip() { /usr/sbin/ip "$@"; }; . /etc/svcops/restore ) > /tmp/boot.err 2>&1 || say "APPLY-FAIL boot-$run $(head -c 300 /tmp/boot.err | tr '\n' ' ')"
done
ipvsadm -S -n | sed "s/^/SVCOPS BOOT-IPVS /"
say "BOOT addresses $(/usr/sbin/ip -4 -o addr show dev svcops-ipvs0 | wc -l)"
say "BOOT sysctl $(sysctl -n net.ipv4.vs.conntrack)"
say "BOOT canary $(ipset list SVCOPS-STATE | sed -n 's/.*svcops-state \([0-9a-f]*\).*/\1/p')"
say "BOOT mark $(ipvsadm -L -n -f 377013 >/dev/null 2>&1 && echo yes)"
uprobe boot-added 6 10.96.0.20 80
uprobe boot-node-port 6 10.0.0.11 30080
finish
