"""A short run of the fault matrix (bench/faults.py): 200 concurrent streams (chat
completions and Responses) under random upstream and client faults, every one well-ended,
nothing left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_fault_matrix_short_run() -> None:
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "faults.py"),
            "--streams",
            "200",
            "--seconds",
            "4",
            "--json",
            "--max-rss-growth-mb",
            "48",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        cwd=ROOT,
    )
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0, summary["failures"]
    assert summary["bad"] == {} and summary["in_flight_after"] == 0
    assert summary["upstream_streams_open_after"] == 0
    results = summary["results"]
    assert results["well_ended"] > 100 and results["client_left"] > 0
    assert results["error_json_ok"] > 0 and "500" not in summary["status"]
    assert summary["apis"]["responses"] > 50 and summary["apis"]["chat"] > 100
