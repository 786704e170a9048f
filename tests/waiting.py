"""Bounded polling for tests: wait for something to become true, for a set time at most."""

from __future__ import annotations

import time


def wait_for(predicate, seconds: float, step: float = 0.05):
    """Poll `predicate` until it returns something true, for at most `seconds`; its last
    value (false when time ran out)."""
    end = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(step)
