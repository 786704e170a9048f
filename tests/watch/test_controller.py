"""The watch's pure helpers: the systemd unit it prints, the metrics address, the file
signature that notices an edited site."""

from __future__ import annotations

import os
import time

import pytest

from svcops.watch.controller import _signature, unit_text
from svcops.watch.metrics import parse_address


def test_the_unit_runs_the_same_watch_and_reloads_with_sighup():
    text = unit_text(["-i", "/srv/ops/inventory/prod.py", "/srv/ops/sites/prod", "--grace", "3"], "/srv/ops")
    assert "ExecStart=" in text and "watch -i /srv/ops/inventory/prod.py /srv/ops/sites/prod --grace 3" in text
    assert "WorkingDirectory=/srv/ops" in text
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "Restart=always" in text and "WantedBy=multi-user.target" in text


def test_metrics_addresses():
    assert parse_address("127.0.0.1:9753") == ("127.0.0.1", 9753)
    assert parse_address(":9753") == ("0.0.0.0", 9753)
    assert parse_address("9753") == ("0.0.0.0", 9753)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("localhost:http")


def test_the_signature_changes_with_an_edit_an_added_file_or_a_removed_one_not_with_the_lock(tmp_path):
    (tmp_path / "services").mkdir()
    f = tmp_path / "services" / "a.yaml"
    f.write_text("a")
    inv = tmp_path / "inv.py"
    inv.write_text("x")
    sig = _signature([tmp_path / "services", inv])
    (tmp_path / "services" / "svcops.lock").write_text("written by the watch itself")
    assert _signature([tmp_path / "services", inv]) == sig
    f.write_text("b")
    os.utime(f, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert _signature([tmp_path / "services", inv]) != sig
    sig = _signature([tmp_path / "services", inv])
    (tmp_path / "services" / "b.yaml").write_text("")
    assert _signature([tmp_path / "services", inv]) != sig
