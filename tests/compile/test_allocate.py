"""Allocation: what an operator relies on when svcops picks addresses and ports.

Properties (hypothesis): allocations never collide and never leave their pool; adding
or removing a service never moves another's allocation; the result does not depend
on the order of the services. Examples: explicit values, conflicts, full pools, the
static/dynamic band split of KEP-3070 and KEP-3668, the lock's entries.
"""

from __future__ import annotations

import random

import netaddr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svcops.compile.allocate import allocate, node_port_band_offset, service_band_offset
from svcops.site.diagnostics import has_errors
from svcops.site.model import (
    POOL_ANNOTATION,
    Allocations,
    Cluster,
    Node,
    NodeNetwork,
    Pool,
    Service,
    ServicePort,
    Source,
)

TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


def svc(
    name: str,
    type: str = "ClusterIP",
    ns: str = "default",
    ports: tuple[tuple[int, str, int | None], ...] = ((80, "TCP", None),),
    cluster_ip: str | None = None,
    lb_ip: str | None = None,
    pool: str | None = None,
    line: int = 1,
) -> Service:
    return Service(
        namespace=ns,
        name=name,
        type=type,  # type: ignore[arg-type]
        ports=tuple(
            ServicePort(f"p{i}", proto, port, port, node_port, line=line + 5 + i)  # type: ignore[arg-type]
            for i, (port, proto, node_port) in enumerate(ports)
        ),
        selector={"app": name},
        cluster_ip=cluster_ip,
        load_balancer_ip=lb_ip,
        annotations={POOL_ANNOTATION: pool} if pool else {},
        source=Source(f"services/{name}.yaml", line),
    )


def cluster(
    cidr: str = "10.96.0.0/24",
    ports: tuple[int, int] = (30000, 30999),
    pools: tuple[Pool, ...] = (Pool("default", ("192.0.2.0/28",)), Pool("extra", ("198.51.100.10-198.51.100.19",))),
    node_network: NodeNetwork | None = NodeNetwork("10.0.0.0/24", "10.0.0.1", ("10.0.0.2",)),
) -> Cluster:
    return Cluster(service_cidr=cidr, node_port_range=ports, load_balancer_pools=pools, node_network=node_network)


def nodes(n: int) -> list[Node]:
    return [Node(f"node{i}", f"192.168.0.{i}") for i in range(1, n + 1)]


def messages(diags) -> list[str]:
    return [str(d) for d in diags]


# --- strategies ---------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
service_specs = st.lists(
    st.tuples(st.sampled_from(("default", "kube-system", "shop")), names, st.sampled_from(TYPES),
              st.sampled_from(("TCP", "UDP"))),
    unique_by=lambda t: (t[0], t[1]),
    max_size=40,
)


def build(specs) -> list[Service]:
    """Services from generated specs, leaving out LoadBalancers beyond their pool's size."""
    room = {"default": 16, "extra": 10}
    out = []
    for ns, name, type, proto in specs:
        pool = "extra" if len(name) % 2 else None
        if type == "LoadBalancer":
            if room[pool or "default"] == 0:
                continue
            room[pool or "default"] -= 1
        out.append(svc(name, type, ns=ns, ports=((80, proto, None), (443, "TCP", None)), pool=pool))
    return out


# Small pools, so that hashes collide and probing is exercised.
SMALL = cluster(cidr="10.96.0.0/26", ports=(30000, 30099))


def check_invariants(c: Cluster, services: list[Service], node_list: list[Node], a: Allocations) -> None:
    net = netaddr.IPNetwork(c.service_cidr)
    proxied = {s.key for s in services if s.proxied}
    assert set(a.cluster_ips) == proxied
    ips = list(a.cluster_ips.values())
    assert len(set(ips)) == len(ips), "two services share a cluster IP"
    for ip in ips:
        assert netaddr.IPAddress(ip) in net and ip not in (str(net.network), str(net.broadcast))

    lo, hi = c.node_port_range
    wanted = {f"{s.key}:{p.key}" for s in services if s.has_node_ports for p in s.ports}
    assert set(a.node_ports) == wanted
    per_proto: dict[str, list[int]] = {}
    for key, port in a.node_ports.items():
        assert lo <= port <= hi
        per_proto.setdefault(key.rsplit("/", 1)[1], []).append(port)
    for proto, used in per_proto.items():
        assert len(set(used)) == len(used), f"two {proto} ports share a node port"

    pools = {p.name: netaddr.IPSet() for p in c.load_balancer_pools}
    for p in c.load_balancer_pools:
        for a_ in p.addresses:
            pools[p.name].add(netaddr.IPRange(*a_.split("-")) if "-" in a_ else netaddr.IPNetwork(a_))
    lbs = list(a.load_balancer_ips.values())
    assert len(set(lbs)) == len(lbs)
    for s in services:
        if s.type == "LoadBalancer":
            home = s.pool or c.load_balancer_pools[0].name
            assert netaddr.IPAddress(a.load_balancer_ips[s.key]) in pools[home]

    if c.node_network is not None:
        nn = c.node_network
        nnet = netaddr.IPNetwork(nn.cidr)
        addrs = list(a.node_addresses.values())
        assert set(a.node_addresses) == {n.name for n in node_list}
        assert len(set(addrs)) == len(addrs)
        forbidden = {str(nnet.network), str(nnet.broadcast), nn.gateway, *nn.dns_servers}
        for ip in addrs:
            assert netaddr.IPAddress(ip) in nnet and ip not in forbidden


# --- properties ---------------------------------------------------------------------


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(specs=service_specs, n_nodes=st.integers(0, 8))
def test_allocations_never_collide_and_never_leave_their_pool(specs, n_nodes):
    services = build(specs)
    node_list = nodes(n_nodes)
    a, diags = allocate(SMALL, services, node_list, Allocations())
    assert not has_errors(diags), messages(diags)
    check_invariants(SMALL, services, node_list, a)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(specs=service_specs, data=st.data())
def test_explicit_values_mixed_with_automatic_ones_never_collide(specs, data):
    services = build(specs)
    # Hand-picked values, distinct, anywhere in the pools (as a user would write them).
    ips = data.draw(st.lists(st.integers(1, 62), unique=True, min_size=len(services), max_size=len(services)))
    ports = data.draw(st.lists(st.integers(30000, 30099), unique=True, min_size=len(services), max_size=len(services)))
    picks = data.draw(st.lists(st.booleans(), min_size=len(services), max_size=len(services)))
    explicit = [
        svc(s.name, s.type, ns=s.namespace, cluster_ip=f"10.96.0.{ip}",
            ports=((80, "SCTP", port if s.has_node_ports else None),), pool=s.pool)
        if pick else s
        for s, ip, port, pick in zip(services, ips, ports, picks)
    ]
    a, diags = allocate(SMALL, explicit, [], Allocations())
    assert not has_errors(diags), messages(diags)
    check_invariants(SMALL, explicit, [], a)
    for s in explicit:
        if s.cluster_ip:
            assert a.cluster_ips[s.key] == s.cluster_ip
        for p in s.ports:
            if p.node_port:
                assert a.node_ports[f"{s.key}:{p.key}"] == p.node_port


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(specs=service_specs, extra=st.tuples(names, st.sampled_from(TYPES)), data=st.data())
def test_adding_or_removing_a_service_never_moves_another(specs, extra, data):
    services = [s for s in build(specs) if not (s.type == "LoadBalancer" and s.pool)]  # room for one more
    before, diags = allocate(SMALL, services, nodes(3), Allocations())
    assert not has_errors(diags)

    added = svc("new-" + extra[0], extra[1])
    after, diags = allocate(SMALL, [*services, added], nodes(4), before)
    assert not has_errors(diags)
    for attr in ("cluster_ips", "node_ports", "load_balancer_ips", "node_addresses"):
        old, new = getattr(before, attr), getattr(after, attr)
        assert {k: new[k] for k in old} == dict(old), f"{attr} moved when a service was added"
    check_invariants(SMALL, [*services, added], nodes(4), after)

    if services:
        gone = data.draw(st.sampled_from(services))
        rest = [s for s in services if s is not gone]
        after, diags = allocate(SMALL, rest, nodes(2), before)
        assert not has_errors(diags)
        assert gone.key not in after.cluster_ips and gone.key not in after.load_balancer_ips
        assert not any(k.startswith(gone.key + ":") for k in after.node_ports)
        assert set(after.node_addresses) == {"node1", "node2"}
        for attr in ("cluster_ips", "node_ports", "load_balancer_ips", "node_addresses"):
            new = getattr(after, attr)
            assert all(getattr(before, attr)[k] == v for k, v in new.items()), f"{attr} moved on removal"


@settings(max_examples=50)
@given(specs=service_specs, seed=st.integers(0, 2**32 - 1))
def test_same_input_same_output_whatever_the_order(specs, seed):
    services = build(specs)
    shuffled = services[:]
    random.Random(seed).shuffle(shuffled)
    node_list = nodes(5)
    shuffled_nodes = node_list[::-1]
    a1, d1 = allocate(SMALL, services, node_list, Allocations())
    a2, d2 = allocate(SMALL, shuffled, shuffled_nodes, Allocations())
    assert a1 == a2 and d1 == d2
    assert list(a1.cluster_ips) == sorted(a1.cluster_ips)  # sorted, as the lock is


def test_two_branches_adding_different_services_pick_different_addresses():
    base = [svc(f"base{i}") for i in range(20)]
    c = cluster(cidr="10.96.0.0/16")
    lock, _ = allocate(c, base, [], Allocations())
    left, _ = allocate(c, [*base, svc("left")], [], lock)
    right, _ = allocate(c, [*base, svc("right")], [], lock)
    # Each branch chose from the service's own hash, not "the next free address".
    assert left.cluster_ips["default/left"] != right.cluster_ips["default/right"]
    merged = Allocations({**left.cluster_ips, **right.cluster_ips})
    again, diags = allocate(c, [*base, svc("left"), svc("right")], [], merged)
    assert not diags and again.cluster_ips == merged.cluster_ips


# --- what gets what -----------------------------------------------------------------


def test_only_proxied_services_get_cluster_ips():
    services = [
        svc("web"),
        svc("db", cluster_ip="None"),
        Service("default", "docs", type="ExternalName", external_name="docs.example.com"),
    ]
    a, diags = allocate(cluster(), services, [], Allocations())
    assert not diags
    assert list(a.cluster_ips) == ["default/web"]


def test_node_ports_for_every_port_of_nodeport_and_loadbalancer_services_only():
    services = [
        svc("a", "ClusterIP"),
        svc("b", "NodePort", ports=((80, "TCP", None), (53, "UDP", None))),
        svc("c", "LoadBalancer"),
    ]
    a, _ = allocate(cluster(), services, [], Allocations())
    assert sorted(a.node_ports) == ["default/b:53/UDP", "default/b:80/TCP", "default/c:80/TCP"]
    assert list(a.load_balancer_ips) == ["default/c"]


def test_no_node_addresses_without_a_node_network():
    a, diags = allocate(cluster(node_network=None), [], nodes(3), Allocations())
    assert not diags and a.node_addresses == {}


# --- explicit values ----------------------------------------------------------------


def test_explicit_values_are_honoured():
    services = [
        svc("dns", "NodePort", cluster_ip="10.96.0.10", ports=((53, "UDP", 30053),)),
        svc("web", "LoadBalancer", lb_ip="198.51.100.15", ports=((80, "TCP", 30080),)),
    ]
    node_list = [Node("node1", "n1", address="10.0.0.50")]
    a, diags = allocate(cluster(), services, node_list, Allocations())
    assert not diags
    assert a.cluster_ips["default/dns"] == "10.96.0.10"
    assert a.node_ports == {"default/dns:53/UDP": 30053, "default/web:80/TCP": 30080}
    assert a.load_balancer_ips["default/web"] == "198.51.100.15"  # in a pool, not the default one
    assert a.node_addresses == {"node1": "10.0.0.50"}


def test_an_explicit_value_replaces_the_services_own_lock_entry():
    lock = Allocations({"default/web": "10.96.0.200"}, {"default/web:80/TCP": 30500})
    a, diags = allocate(cluster(), [svc("web", "NodePort", cluster_ip="10.96.0.5", ports=((80, "TCP", 30005),))], [], lock)
    assert not diags
    assert a.cluster_ips == {"default/web": "10.96.0.5"} and a.node_ports == {"default/web:80/TCP": 30005}


def test_same_node_port_number_for_tcp_and_udp_coexists():
    services = [svc("a", "NodePort", ports=((53, "TCP", 30053),)), svc("b", "NodePort", ports=((53, "UDP", 30053),))]
    a, diags = allocate(cluster(), services, [], Allocations())
    assert not diags and set(a.node_ports.values()) == {30053}


# --- conflicts ----------------------------------------------------------------------


def test_explicit_cluster_ip_held_by_another_service_in_the_lock_is_an_error():
    lock = Allocations({"kube-system/dns": "10.96.0.10"})
    services = [svc("dns", ns="kube-system"), svc("web", cluster_ip="10.96.0.10", line=3)]
    a, diags = allocate(cluster(), services, [], lock)
    assert messages(diags) == [
        "services/web.yaml:3: spec.clusterIP: 10.96.0.10 is already allocated to kube-system/dns (svcops.lock)"
    ]
    assert a.cluster_ips["kube-system/dns"] == "10.96.0.10"  # the holder keeps it


def test_a_released_address_can_be_taken_explicitly():
    lock = Allocations({"kube-system/dns": "10.96.0.10"})
    a, diags = allocate(cluster(), [svc("web", cluster_ip="10.96.0.10")], [], lock)
    assert not diags and a.cluster_ips == {"default/web": "10.96.0.10"}


def test_two_manifests_asking_for_the_same_value_is_an_error_naming_both():
    services = [
        svc("a", "NodePort", ports=((80, "TCP", 30080),), line=2),
        svc("b", "NodePort", ports=((80, "TCP", 30080),), line=4),
    ]
    _, diags = allocate(cluster(), services, [], Allocations())
    assert messages(diags) == [
        "services/b.yaml:9: spec.ports[0].nodePort: 30080 is also requested by default/a:80/TCP (services/a.yaml:7)"
    ]


def test_explicit_node_port_held_in_the_lock_names_the_holder_and_the_port_line():
    lock = Allocations(node_ports={"default/a:80/TCP": 30080})
    services = [svc("a", "NodePort"), svc("b", "NodePort", ports=((8080, "TCP", 30080),), line=10)]
    _, diags = allocate(cluster(), services, [], lock)
    assert messages(diags) == [
        "services/b.yaml:15: spec.ports[0].nodePort: 30080 is already allocated to default/a:80/TCP (svcops.lock)"
    ]


def test_explicit_lb_address_must_be_in_a_pool_and_free():
    lock = Allocations(load_balancer_ips={"default/a": "192.0.2.3"})
    services = [
        svc("a", "LoadBalancer"),
        svc("b", "LoadBalancer", lb_ip="192.0.2.3"),
        svc("c", "LoadBalancer", lb_ip="203.0.113.1"),
    ]
    _, diags = allocate(cluster(), services, [], lock)
    assert messages(diags) == [
        "services/b.yaml:1: spec.loadBalancerIP: 192.0.2.3 is already allocated to default/a (svcops.lock)",
        "services/c.yaml:1: spec.loadBalancerIP: 203.0.113.1 is not in any of the loadBalancerPools (pools: default, extra)",
    ]


def test_unknown_pool_annotation_is_an_error():
    _, diags = allocate(cluster(), [svc("a", "LoadBalancer", pool="nope")], [], Allocations())
    assert messages(diags) == [
        "services/a.yaml:1: metadata.annotations.svcops.io/address-pool: "
        "no load-balancer pool named 'nope' in svcops.yaml (pools: default, extra)"
    ]


def test_node_address_never_gateway_dns_network_or_broadcast_nor_another_nodes():
    node_list = [
        Node("gw", "h", address="10.0.0.1"),
        Node("dns", "h", address="10.0.0.2"),
        Node("net", "h", address="10.0.0.0"),
        Node("bcast", "h", address="10.0.0.255"),
        Node("ok", "h", address="10.0.0.9"),
        Node("twin", "h", address="10.0.0.9"),
    ]
    a, diags = allocate(cluster(), [], node_list, Allocations())
    assert messages(diags) == [
        "inventory: bcast.svcops_address: 10.0.0.255 is the broadcast address of nodeNetwork 10.0.0.0/24",
        "inventory: dns.svcops_address: 10.0.0.2 is a DNS server of nodeNetwork 10.0.0.0/24",
        "inventory: gw.svcops_address: 10.0.0.1 is the gateway of nodeNetwork 10.0.0.0/24",
        "inventory: net.svcops_address: 10.0.0.0 is the network address of nodeNetwork 10.0.0.0/24",
        "inventory: twin.svcops_address: 10.0.0.9 is also requested by ok (inventory)",
    ]
    assert a.node_addresses == {"ok": "10.0.0.9"}


def test_a_lock_with_one_value_for_two_services_is_an_error_not_a_silent_move():
    # What a git merge of two branches that picked the same address leaves behind.
    lock = Allocations({"default/a": "10.96.0.100", "default/b": "10.96.0.100"})
    _, diags = allocate(cluster(), [svc("a"), svc("b")], [], lock)
    assert len(diags) == 1
    assert str(diags[0]).startswith(
        "svcops.lock: clusterIPs.default/b: 10.96.0.100 is allocated to both default/a and default/b"
    )


def test_a_lock_entry_outside_the_service_cidr_is_an_error():
    lock = Allocations({"default/a": "10.100.0.5"}, {"default/a:80/TCP": 32000})
    _, diags = allocate(cluster(), [svc("a", "NodePort")], [], lock)
    assert [(d.file, d.field) for d in diags] == [
        ("svcops.lock", "clusterIPs.default/a"),
        ("svcops.lock", "nodePorts.default/a:80/TCP"),
    ]
    assert "is outside serviceCIDR 10.96.0.0/24" in diags[0].message
    assert "is outside nodePortRange 30000-30999" in diags[1].message


def test_changing_the_pool_annotation_moves_the_lb_address_to_the_new_pool():
    first, _ = allocate(cluster(), [svc("a", "LoadBalancer")], [], Allocations())
    assert netaddr.IPAddress(first.load_balancer_ips["default/a"]) in netaddr.IPNetwork("192.0.2.0/28")
    moved, diags = allocate(cluster(), [svc("a", "LoadBalancer", pool="extra")], [], first)
    assert not diags
    assert netaddr.IPAddress(moved.load_balancer_ips["default/a"]) in netaddr.IPRange("198.51.100.10", "198.51.100.19")


# --- full pools ---------------------------------------------------------------------


def test_a_full_service_cidr_is_an_error_naming_the_pool_and_its_size():
    services = [svc(f"s{i:02d}") for i in range(16)]
    a, diags = allocate(cluster(cidr="10.96.0.0/28"), services, [], Allocations())
    assert len(a.cluster_ips) == 14  # 16 addresses minus network and broadcast
    assert len(diags) == 1
    assert str(diags[0]).startswith("svcops.yaml: serviceCIDR: pool 10.96.0.0/28 is full (14 addresses): ")
    left_out = {s.key for s in services} - set(a.cluster_ips)
    assert len(left_out) == 2 and all(key in diags[0].message for key in left_out)


def test_full_node_port_range_lb_pool_and_node_network():
    c = cluster(
        ports=(30000, 30003),
        pools=(Pool("tiny", ("192.0.2.8-192.0.2.9",)),),
        node_network=NodeNetwork("10.0.0.0/29", "10.0.0.1", ("10.0.0.2",)),
    )
    services = [svc(f"s{i}", "LoadBalancer") for i in range(5)]
    _, diags = allocate(c, services, nodes(5), Allocations())
    text = messages(diags)
    assert any(t.startswith("svcops.yaml: nodePortRange: range 30000-30003 is full for TCP (4 ports)") for t in text)
    assert any(t.startswith("svcops.yaml: loadBalancerPools[0]: pool tiny (192.0.2.8-192.0.2.9) is full (2 addresses)") for t in text)
    # /29: 8 addresses minus network, broadcast, gateway and DNS server.
    assert any(t.startswith("svcops.yaml: nodeNetwork.cidr: pool 10.0.0.0/29 is full (4 addresses)") for t in text)


# --- band split (KEP-3070, KEP-3668) ------------------------------------------------


def test_band_sizes_follow_the_keps():
    # The examples of the Kubernetes documentation for KEP-3070.
    assert service_band_offset(2**8) == 16  # 10.96.0.0/24: static band .1-.16
    assert service_band_offset(2**12) == 256  # /20
    assert service_band_offset(2**4) == 0  # /28: too small to split
    # KEP-3668: the default range 30000-32767 has 2768 ports, 2768/32 = 86.
    assert node_port_band_offset(2768) == 86
    assert node_port_band_offset(100) == 16
    assert node_port_band_offset(100_000) == 128


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 238))
def test_automatic_cluster_ips_use_the_upper_band_while_it_has_room(n):
    # 10.96.0.0/24: static band 10.96.0.1-10.96.0.16, dynamic band .17-.254 (238).
    a, diags = allocate(cluster(), [svc(f"s{i}") for i in range(n)], [], Allocations())
    assert not diags
    assert all(int(ip.rsplit(".", 1)[1]) > 16 for ip in a.cluster_ips.values())


def test_the_lower_band_is_used_once_the_upper_is_full():
    a, diags = allocate(cluster(), [svc(f"s{i}") for i in range(240)], [], Allocations())
    assert not diags
    low = [ip for ip in a.cluster_ips.values() if int(ip.rsplit(".", 1)[1]) <= 16]
    assert len(low) == 2


def test_automatic_node_ports_use_the_upper_band_while_it_has_room():
    # 30000-30999: 1000 ports, static band max(16, 1000/32) = 31 ports, 30000-30030.
    c = cluster(cidr="10.96.0.0/20")
    services = [svc(f"s{i}", "NodePort") for i in range(969)]
    a, diags = allocate(c, services, [], Allocations())
    assert not diags
    assert min(a.node_ports.values()) == 30031
    a, diags = allocate(c, [*services, svc("one-more", "NodePort")], [], a)
    assert not diags and min(a.node_ports.values()) < 30031


def test_a_hand_picked_low_address_does_not_collide_with_automatic_ones():
    services = [svc(f"s{i}") for i in range(200)]
    lock, _ = allocate(cluster(), services, [], Allocations())
    a, diags = allocate(cluster(), [*services, svc("dns", cluster_ip="10.96.0.10")], [], lock)
    assert not diags and a.cluster_ips["default/dns"] == "10.96.0.10"
