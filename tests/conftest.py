"""The test tree mirrors svcops's own: site/, compile/, render/, facts/, operations/, the
rollout and CLI at the top, lab/, e2e/ (the lab, end to end) and qemu/ (IPVS in a real
kernel). Helpers shared by several folders live here at the top (golden.py, netns.py,
paths.py, render_fixtures.py, ...): pytest puts this folder on sys.path for every test,
because this conftest.py is here.
"""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_parse_cache(tmp_path_factory):
    """svcops remembers what it parsed (`svcops.site.cache`, ~/.cache/svcops): the
    tests, and every svcops they start, use a cache of their own, fresh each session,
    never the user's."""  # noqa: D401
    saved = {k: os.environ.get(k) for k in ("SVCOPS_CACHE_DIR", "SVCOPS_WATCH_DIR")}
    os.environ["SVCOPS_CACHE_DIR"] = str(tmp_path_factory.mktemp("svcops-cache"))
    # And the state of the watches they run (svcops.site.watchstate): theirs alone.
    os.environ["SVCOPS_WATCH_DIR"] = str(tmp_path_factory.mktemp("svcops-watch"))
    yield
    for k, old in saved.items():
        if old is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = old
