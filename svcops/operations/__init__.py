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
    txn         begin / commit: the node's transaction (its lock, undoable steps, the
                guard that undoes them unless a fresh SSH login commits)
    guard       fresh SSH logins (the commit's proof that the rules let operators in)
    util        small command builders they share

`svcops.deploy.node_operations` picks the rule operations from the site's
``proxyMode``; the other modes' operations then remove what their mode left; it puts
``txn.begin`` first and ``txn.commit`` last. A rule operation used on its own (no
``txn.begin`` before it) is its own transaction, deciding from facts read before it
takes the node's lock; the others then change the node without a transaction.
"""
