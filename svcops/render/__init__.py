"""Renderers, pure: the model's values in, the text a node gets out (and the reverse: a
node's live state read back, and what to send it to get from there to the render).

    chains         the names of svcops's iptables chains
    iptables       kube-proxy's iptables mode; iptables_sync: in sync?, rollback, diff
    nftables       kube-proxy's nftables mode; nftables_live: the live table parsed;
                   nftables_normal: the render in nft's printed form; nftables_diff:
                   what to send a live table (changes, drift, foreign objects);
                   nftables_sync: the chunked transactions file, its loader, fingerprints
    ipvs           kube-proxy's IPVS mode; ipvs_sync: each step from the node's state
    ifupdown       the node's static address (Debian's /etc/network/interfaces.d)
    dns            the cluster domain's zone, pdns-recursor's files, resolv.conf
    conntrack      the stale UDP flows to delete when endpoints go
    node_files     what a node keeps: boot rules, restore script, systemd unit, sysctl
"""
