"""pyinfra operations that put svcops's rendered output on a node, one module per concern.

Import them in your own ``deploy.py`` like pyinfra's own operations. Each reads the
node's live state from a svcops fact (`svcops.facts`) and yields commands only for
what differs, so a second run with nothing changed runs nothing::

    from pyinfra import host
    from svcops.deploy import compiled_site
    from svcops.operations import iptables

    out = compiled_site("sites/prod").node(host.name).output
    iptables.rules(name="svcops rules", rules=out.iptables)

or all of them at once, for the site named by ``svcops_site`` in the inventory's data
(what ``deploys/services.py`` does)::

    from svcops.deploy import services
    services()

The modules:

    iptables    rules: svcops's SVCOPS- chains and jumps (in every mode: empty in
                nftables mode, IPVS mode's few chains in IPVS mode)
    nftables    rules: table ip svcops (rules=None: no such table)
    ipvs        rules: IPVS mode's sets, chains, dummy interface, virtual servers;
                absent: no svcops IPVS state (the other modes)
    node        files (boot rules, unit, sysctl, ifupdown file), ip_forward,
                static_address, lb_addresses
    dns         server: pdns-recursor for the cluster domain and resolv.conf;
                absent: svcops's DNS taken off again
    conntrack   the stale-UDP-flow cleanup the rule operations run after a change
    guard       the SSH dead-man switch every rule operation runs under
    util        small command builders they share

`svcops.deploy.node_operations` picks the rule operations from the site's
``proxyMode``; the other modes' operations then remove what their mode left.
"""
