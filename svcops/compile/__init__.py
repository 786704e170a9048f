"""The core's decisions, pure and deterministic: from a loaded site to what each node gets.

    allocate   cluster IPs, node ports, load-balancer and node addresses (svcops.lock)
    endpoints  which workloads stand behind each service port (Kubernetes' endpoints)
    announce   which node announces each load-balancer address
    explain    where a packet to IP:PORT goes on a node, and why
    pipeline   allocate -> resolve endpoints -> render every node, for the proxy mode
    nodeplan   everything one node gets: rules, announcements, files, DNS zone, UDP ports
"""
