"""`svcops status`: the services as `kubectl get svc -o wide` shows them, with endpoints
and their readiness.

    svcops status -i inventory/lab.py                 # the table, endpoints indented
    svcops status -i inventory/prod.py --json sites/prod

The readiness comes from the watch running for the site on this controller
(`svcops.site.watchstate`) when there is one; else every node is asked to run its
probes once (`svcops.watch.nodes.probe_once`, bounded), a node that cannot be reached
counting as lost. Changes nothing: svcops.lock is not written (allocations it lacks
are made in memory), no node is changed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import TextIO

__all__ = ["StatusOptions", "run"]


@dataclass
class StatusOptions:
    inventory: str
    site: str | None = None
    json: bool = False


def run(opts: StatusOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    import logging
    import os

    from pyinfra import logger

    from svcops.apply import _setup_output, hosts_and_site
    from svcops.compile.probes import node_probes
    from svcops.compile.status import service_statuses, status_json, status_text
    from svcops.deploy import SiteError, compile_from_hosts
    from svcops.site.model import Readiness
    from svcops.site.watchstate import running_watch
    from svcops.watch.nodes import probe_once

    if not os.path.isfile(opts.inventory):
        print(f"{opts.inventory}: inventory file not found", file=err)
        return 1
    _setup_output()
    logger.setLevel(logging.WARNING)
    found = hosts_and_site(opts.inventory, opts.site, err)
    if found is None:
        return 1
    hosts, site_root = found
    try:
        plan = compile_from_hosts(site_root, hosts, opts.inventory, write=False, readiness=None)
    except SiteError as e:
        print(str(e).replace("; nothing was pushed", ""), file=err)
        return 1
    for d in plan.diagnostics:
        print(d, file=err)
    c = plan.compiled
    watch = running_watch(site_root)
    if watch is not None:
        readiness = watch.readiness
        source = f"the watch (pid {watch.pid}), {time.time() - watch.updated:.0f} s ago"
    else:
        probes = {n.name: node_probes(n, c.allocations) for n in c.nodes}
        asked = probe_once(opts.inventory, {n: p for n, p in probes.items() if p}) if any(probes.values()) else {}
        not_ready, why, lost = set(), {}, set()
        for node, got in asked.items():
            if isinstance(got, str):
                lost.add(node)
                print(f"svcops status: {node}: {got}", file=err)
                continue
            for w, (ok, reason) in got.items():
                why[f"{node}/{w}"] = reason
                if not ok:
                    not_ready.add(f"{node}/{w}")
        readiness = Readiness(frozenset(not_ready), frozenset(lost), why)
        n = sum(1 for p in probes.values() for _ in p)
        source = f"probed now ({n} probe{'s' if n != 1 else ''}; no watch runs for this site)" if n else "no probes (every workload is ready while its node is)"
    statuses = service_statuses(c.site, c.nodes, c.allocations, readiness)
    if opts.json:
        json.dump(status_json(statuses, source), out, indent=2)
        print(file=out)
    else:
        out.write(status_text(statuses, source))
    return 0
