"""Names of the iptables chains svcops owns.

Every chain svcops creates starts with ``SVCOPS-``; nothing else on a node is ever
flushed, deleted or rewritten. The per-service chains are named as kube-proxy names
its own: a prefix and the first 16 characters of base32(sha256(name)), where the name
is the service port's name ("ns/svc:port", or "ns/svc" for an unnamed port) followed by
the lower-case protocol (and, for an endpoint chain, by "ip:port"). The names are
stable (the same service port always gets the same chains, on every node and every
run) and short: iptables allows 28 characters, the longest here is 27.

    SVCOPS-SVC-<hash>  endpoints for "Cluster" traffic policy
    SVCOPS-SVL-<hash>  this node's endpoints, for "Local" traffic policies
    SVCOPS-EXT-<hash>  traffic to node ports, external IPs and load-balancer IPs
    SVCOPS-FW-<hash>   loadBalancerSourceRanges of a load-balancer IP
    SVCOPS-SEP-<hash>  one endpoint: hairpin masquerade and DNAT
"""

from __future__ import annotations

from hashlib import sha256

PREFIX = "SVCOPS-"

# Top-level chains (nat).
SERVICES = "SVCOPS-SERVICES"
NODEPORTS = "SVCOPS-NODEPORTS"
POSTROUTING = "SVCOPS-POSTROUTING"
MARK_MASQ = "SVCOPS-MARK-MASQ"
# Top-level chains (filter); SERVICES exists in both tables.
EXTERNAL_SERVICES = "SVCOPS-EXTERNAL-SERVICES"
FORWARD = "SVCOPS-FORWARD"
FIREWALL = "SVCOPS-FIREWALL"

# The canary (both tables): one rule carrying the fingerprint of svcops's record on the
# node (`svcops.render.iptables_record`).
STATE = "SVCOPS-STATE"

NAT_TOP = (SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ)
FILTER_TOP = (SERVICES, EXTERNAL_SERVICES, FORWARD, FIREWALL)

SVC = "SVCOPS-SVC-"
SVL = "SVCOPS-SVL-"
EXT = "SVCOPS-EXT-"
FW = "SVCOPS-FW-"
SEP = "SVCOPS-SEP-"

MAX_CHAIN = 28  # iptables' limit (XT_EXTENSION_MAXNAMELEN - 1)

# base32 (RFC 4648 alphabet) of 10 bits at a time: 16 characters are 80 bits, the
# first 10 bytes of the digest. base64.b32encode is pure Python and 3x slower, which
# shows with 100,000 endpoints.
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PAIRS = [a + b for a in _B32 for b in _B32]


def hash16(text: str) -> str:
    """base32(sha256(text))[:16], as kube-proxy's portProtoHash."""
    n = int.from_bytes(sha256(text.encode()).digest()[:10], "big")
    p = _PAIRS
    return (
        p[n >> 70]
        + p[(n >> 60) & 1023]
        + p[(n >> 50) & 1023]
        + p[(n >> 40) & 1023]
        + p[(n >> 30) & 1023]
        + p[(n >> 20) & 1023]
        + p[(n >> 10) & 1023]
        + p[n & 1023]
    )


def port_hash(service_port_name: str, protocol: str) -> str:
    """The hash shared by a service port's SVC/SVL/EXT/FW chains."""
    return hash16(service_port_name + protocol.lower())


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """SVCOPS-SEP-<hash> of one endpoint ("ip:port") of a service port."""
    return SEP + hash16(service_port_name + protocol.lower() + endpoint)


def is_svcops_chain(name: str) -> bool:
    return name.startswith(PREFIX)
