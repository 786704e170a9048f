"""The commands as a user runs them: exit status, what they print, what they write."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from paths import ROOT
from sitefs import add_service

from svcops.cli import main

EXAMPLE = ROOT / "examples" / "walkthrough"
INVENTORY = str(ROOT / "inventory" / "example.py")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A private copy of the example site, without its lock."""
    dst = tmp_path / "site"
    shutil.copytree(EXAMPLE, dst)
    (dst / "svcops.lock").unlink(missing_ok=True)
    return dst


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_example_site_is_clean(capsys, site):
    code, out, err = run(capsys, "validate", "-i", INVENTORY, str(site))
    assert code == 0, err
    assert "valid (4 services)" in out
    assert "error" not in err


def test_validate_reports_every_error_with_file_and_line_and_changes_nothing(capsys, site):
    bad = site / "services" / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n"
        "  ports:\n    - port: 70000\n"
    )
    before = sorted(p.name for p in site.rglob("*"))
    code, out, err = run(capsys, "validate", str(site))
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("services/bad.yaml:")]
    # Both problems, each with its own line: the name (line 4) and the port (line 7).
    assert any(ln.startswith("services/bad.yaml:4: metadata.name:") for ln in lines), err
    assert any(ln.startswith("services/bad.yaml:7: spec.ports[0].port:") for ln in lines), err
    assert sorted(p.name for p in site.rglob("*")) == before  # no lock written


def test_plan_writes_lock_once_and_then_reports_no_change(capsys, site):
    code, out, err = run(capsys, "plan", "-i", INVENTORY, "--detailed-exitcode", str(site))
    assert code == 2, err  # first plan allocates
    lock = yaml.safe_load((site / "svcops.lock").read_text())
    assert lock["clusterIPs"]["default/my-deploy"] == "10.1.11.83"  # the seed's, as written
    assert lock["nodePorts"]["default/nginx-nodeport:30080/TCP"] == 30001
    assert "default/docs" not in lock["clusterIPs"]  # ExternalName: DNS only
    assert set(lock["nodeAddresses"]) == {"node1", "node2", "node3"}
    assert "+ clusterIP" in out and "node1 (192.168.36.11)" in out

    text = (site / "svcops.lock").read_text()
    code, out, err = run(capsys, "plan", "-i", INVENTORY, "--detailed-exitcode", str(site))
    assert code == 0, err
    assert "no change" in out
    assert (site / "svcops.lock").read_text() == text


def test_plan_shows_the_dns_zone_every_node_serves_or_that_dns_is_off(capsys, site):
    code, out, err = run(capsys, "plan", "-i", INVENTORY, str(site))
    assert code == 0, err
    # The walkthrough: three ClusterIP/NodePort/LoadBalancer names, one ExternalName, two named ports.
    assert "DNS: zone cluster.local on every node: 3 A, 1 CNAME, 2 SRV" in out
    code, out, err = run(capsys, "plan", "-i", INVENTORY, "--json", str(site))
    assert json.loads(out)["dns"]["records"] == {"A": 3, "CNAME": 1, "SRV": 2}
    (site / "svcops.yaml").write_text((site / "svcops.yaml").read_text() + "serviceDNS: false\n")
    code, out, err = run(capsys, "plan", "-i", INVENTORY, str(site))
    assert "DNS: off (serviceDNS: false)" in out
    code, out, err = run(capsys, "plan", "-i", INVENTORY, "--json", str(site))
    assert json.loads(out)["dns"] is None


def test_plan_keeps_existing_allocations_when_a_service_is_added(capsys, site):
    assert run(capsys, "plan", "-i", INVENTORY, str(site))[0] == 0
    before = yaml.safe_load((site / "svcops.lock").read_text())
    add_service(site, "extra")
    code, out, err = run(capsys, "plan", "-i", INVENTORY, "--json", "--detailed-exitcode", str(site))
    assert code == 2, err
    plan = json.loads(out)
    added = [c for c in plan["allocationChanges"] if c["action"] == "add"]
    assert [c["key"] for c in added] == ["default/extra"]
    after = yaml.safe_load((site / "svcops.lock").read_text())
    for kind, values in before.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert after[kind][key] == value


def test_plan_with_an_error_does_not_touch_the_lock(capsys, site):
    assert run(capsys, "plan", "-i", INVENTORY, str(site))[0] == 0
    text = (site / "svcops.lock").read_text()
    add_service(site, "extra")
    (site / "services" / "broken.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x\n")
    code, out, err = run(capsys, "plan", "-i", INVENTORY, str(site))
    assert code == 1
    assert "services/broken.yaml:" in err
    assert (site / "svcops.lock").read_text() == text


def test_render_prints_payload_and_interfaces_without_writing_the_lock(capsys, site):
    code, out, err = run(capsys, "render", "-i", INVENTORY, "--node", "node2", str(site))
    assert code == 0, err
    assert not (site / "svcops.lock").exists()
    assert "run `svcops plan`" in err  # allocations made in memory only
    assert "*nat" in out and "COMMIT" in out
    assert "-d 10.1.11.83/32" in out  # the seed's cluster IP
    assert "--dport 30001" in out  # the seed's node port
    assert "address 192.168.36.12/24" in out and "gateway 192.168.36.1" in out


def test_render_unknown_node_is_an_error_naming_the_known_ones(capsys, site):
    code, out, err = run(capsys, "render", "-i", INVENTORY, "--node", "node9", str(site))
    assert code == 1
    assert "node9" in err and "node1, node2, node3" in err
    assert out == ""


@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="iptables not installed")
def test_rendered_payload_passes_iptables_restore_test(capsys, site):
    code, out, err = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--only", "iptables", str(site))
    assert code == 0, err
    check = subprocess.run(["iptables-restore", "--test", "--noflush"], input=out, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr


def test_usage_errors_exit_1_not_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan"])  # -i is required
    assert e.value.code == 1


def test_help_teaches_with_examples(capsys):
    for cmd in ("validate", "plan", "render", "explain", "watch", "status"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"svcops {cmd}" in out


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "svcops"
    res = subprocess.run([str(exe), "validate", str(EXAMPLE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout


def test_explain_names_the_service_and_every_backend(capsys, site):
    code, out, err = run(capsys, "explain", "-i", INVENTORY, "--node", "node2", "192.168.36.12:30001", str(site))
    assert code == 0, err
    assert "node port of default/nginx-nodeport:http" in out
    for backend in ("192.168.36.11:80", "192.168.36.12:80", "192.168.36.13:80"):
        assert f"-> {backend}" in out
    assert not (site / "svcops.lock").exists()  # explain writes nothing
    code, out, err = run(capsys, "explain", "-i", INVENTORY, "--node", "node2", "--json", "10.1.11.83:8000", str(site))
    assert code == 0 and json.loads(out)["verdict"] == "forward"


def test_explain_counts_an_announced_load_balancer_address_as_the_nodes_own(capsys, site):
    # web-lb's address is local on the one node announcing it: node ports answer there.
    lb = None
    for node in ("node1", "node2", "node3"):
        code, out, err = run(capsys, "explain", "-i", INVENTORY, "--node", node, "--json", "192.168.36.252:30001", str(site))
        assert code == 0, err
        if json.loads(out)["verdict"] == "forward":
            assert lb is None, "announced by one node only"
            lb = node
            assert "node port" in json.dumps(json.loads(out))
    assert lb is not None


def test_explain_bad_target_is_an_error(capsys, site):
    code, out, err = run(capsys, "explain", "-i", INVENTORY, "--node", "node2", "10.1.11.83", str(site))
    assert code == 1 and "expected IP:PORT" in err


def test_watch_unit_runs_the_same_watch_from_here(capsys, site, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["svcops", "watch", "-i", INVENTORY, str(site), "--grace", "3", "--unit"])
    code, out, _ = run(capsys, "watch", "-i", INVENTORY, str(site), "--grace", "3", "--unit")
    assert code == 0
    assert f"watch -i {INVENTORY} {site} --grace 3\n" in out and "--unit" not in out
    assert "ExecReload=/bin/kill -HUP $MAINPID" in out


def test_watch_and_status_refuse_a_missing_inventory_or_a_broken_site(capsys, site):
    code, _, err = run(capsys, "watch", "-i", "nowhere.py", str(site))
    assert code == 1 and "nowhere.py: inventory file not found" in err
    (site / "svcops.yaml").write_text("serviceCIDR: [\n")
    code, _, err = run(capsys, "watch", "-i", INVENTORY, str(site))
    assert code == 1 and "the watch did not start" in err and "svcops.yaml" in err
    code, _, err = run(capsys, "status", "-i", INVENTORY, str(site))
    assert code == 1 and "svcops.yaml" in err
