"""Golden files: rendered text compared with a reviewed, checked-in copy.

    SVCOPS_UPDATE_GOLDEN=1 bash scripts/test.sh -k golden    # rewrite them, then review the diff
"""

from __future__ import annotations

import os
from pathlib import Path

UPDATE = os.environ.get("SVCOPS_UPDATE_GOLDEN") == "1"


def check_golden(path: Path, text: str) -> None:
    """`text` must equal the golden file at `path` (written first when updating)."""
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing {path}: run with SVCOPS_UPDATE_GOLDEN=1"
    assert text == path.read_text()
