"""The shape of the code: layers as folders, imports only downward, no cycles.

A module may import from its own layer and the layers before it in `LAYERS`, never from
a later one; imports inside functions count too (a lazy import is still a dependency).
The pure core (render/, compile/) touches no pyinfra, SSH or process. And what the
README tells pyinfra users to import is there and is what pyinfra expects.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from paths import ROOT
from pyinfra.api import FactBase

# In order: each layer may use the ones before it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("svcops", "svcops.gcpause"),  # the package itself (its version), a leaf utility
    ("svcops.site", "svcops.schemas"),  # what the user wrote
    ("svcops.render",),  # model values in, node text out
    ("svcops.compile",),  # allocation, endpoints, announcement, the pipeline
    ("svcops.facts",),  # pyinfra: reading a node
    ("svcops.operations",),  # pyinfra: changing a node
    ("svcops.nodediff",),  # the rollout: the dry-run diff,
    ("svcops.drift",),  # the same said per service (svcops check),
    ("svcops.deploy",),  # the deploy,
    ("svcops.apply",),  # svcops apply
    ("svcops.check",),  # svcops check (reads as apply --dry does)
    ("svcops.watch",),  # svcops watch: probes, readiness, pushes
    ("svcops.status",),  # svcops status (the watch's readiness, or probes run once)
    ("svcops.lab",),
    ("svcops.cli",),
)
CORE = ("svcops.render", "svcops.compile")
NOT_IN_CORE = ("pyinfra", "pyinfra_cli", "paramiko", "gevent", "subprocess", "socket.socket")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "svcops").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    out["svcops.schemas"] = ROOT / "schemas" / "__init__.py"
    return out


MODULES = _modules()


def layer(module: str) -> int:
    best, where = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, where = len(name), i
    assert where is not None, f"{module} is in no layer: give it a folder of LAYERS (or a place in the list)"
    return where


def imports(module: str) -> list[tuple[str, int]]:
    """(imported module, line) for every import in `module`'s file, at any depth."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


def svcops_deps(module: str) -> set[str]:
    return {m for m, _ in imports(module) if m in MODULES and m != module}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers_only(module):
    mine = layer(module)
    up = [f"line {line}: {m} ({LAYERS[layer(m)][0]})" for m, line in imports(module) if m in MODULES and layer(m) > mine]
    assert not up, f"{module} ({LAYERS[mine][0]}) imports from a layer above it: " + "; ".join(up)


def test_no_import_cycles():
    graph = {m: svcops_deps(m) for m in MODULES}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m) :] + [m]))
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, path + [m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(CORE)))
def test_the_core_does_no_io_of_the_shell(module):
    bad = [f"line {line}: {m}" for m, line in imports(module) if m.startswith(NOT_IN_CORE)]
    assert not bad, f"{module} is core: " + "; ".join(bad)


# What README.md and the packages' docstrings tell a pyinfra user to import.
OPERATIONS = {
    "iptables": ["rules"],
    "nftables": ["rules"],
    "ipvs": ["rules", "absent"],
    "node": ["files", "ip_forward", "static_address", "lb_addresses"],
    "dns": ["server", "absent"],
}
FACTS = {
    "iptables": ["SvcopsIptables"],
    "node": ["SvcopsNodeState"],
    "nftables": ["SvcopsNftables"],
    "ipvs": ["SvcopsIpvs"],
    "dns": ["SvcopsDns"],
    "cache": ["SvcopsFacts"],
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operations_import_like_pyinfras_own(name):
    module = importlib.import_module(f"svcops.operations.{name}")
    assert set(OPERATIONS[name]) <= set(module.__all__)
    for op in OPERATIONS[name]:
        # pyinfra's @operation keeps the generator it wraps as `_inner`
        assert callable(getattr(getattr(module, op), "_inner", None)), f"svcops.operations.{name}.{op} is not a pyinfra operation"


@pytest.mark.parametrize("name", sorted(FACTS))
def test_facts_import_like_pyinfras_own(name):
    module = importlib.import_module(f"svcops.facts.{name}")
    for fact in FACTS[name]:
        assert issubclass(getattr(module, fact), FactBase)
