"""pyinfra facts about svcops's footprint on a node, one module per concern.

pyinfra does not cache facts: every ``host.get_fact`` runs its command again. So
svcops has a few broad facts, one command each, and the operations
(`svcops.operations`) read all they need from them (and through `svcops.facts.cache`,
which reads them all in one round trip and shares them between consecutive operations
that change nothing):

    iptables.SvcopsIptables   svcops's chains, their rules and its jumps in tables
                              filter and nat: ``iptables-save -t filter; -t nat``
    node.SvcopsNodeState      sha256 of every file svcops persists, the boot unit's
                              symlink, net.ipv4.ip_forward, the node's IPv4 addresses
    nftables.SvcopsNftables   svcops's nftables table (chains, sets, map elements with
                              their digests) and the fingerprint of its boot file
    ipvs.SvcopsIpvs           whether the node can do IPVS, and svcops's IPVS footprint
    ipvs.SvcopsIpvsCanary     the cheap part of it, the IPVS record's canary and index
    dns.SvcopsDns             pdns-recursor, svcops's DNS files and /etc/resolv.conf
    cache.SvcopsFacts         all of the above in one round trip

Use them in your own deploy like any pyinfra fact::

    from pyinfra import host
    from svcops.facts.iptables import SvcopsIptables

    live = host.get_fact(SvcopsIptables)        # a svcops.render.iptables.LiveTables
    print(sorted(live.table("nat").chains))     # ['SVCOPS-MARK-MASQ', 'SVCOPS-NODEPORTS', ...]

On the command line: ``pyinfra inventory/lab.py fact svcops.facts.node.SvcopsNodeState``.
"""
