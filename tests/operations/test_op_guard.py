"""The SSH guard's dead-man switch (`svcops.operations.guard`): it fires only while still armed.
"""

from __future__ import annotations

from svcops.operations.guard import deadman_script


def test_deadman_script_fires_only_if_still_armed():
    text = deadman_script("abc123", 45)
    assert "sleep 45" in text
    assert "if mv /run/svcops/armed.abc123 /run/svcops/fired.abc123 2>/dev/null; then" in text
    assert "iptables-restore -w 5 --noflush /run/svcops/rollback.abc123" in text
