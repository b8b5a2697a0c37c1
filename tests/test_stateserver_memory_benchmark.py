"""The state server memory benchmark keeps working at a small size (memory is never asserted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import stateserver_memory
from benchmarks.results import record
from tests.benchmark_runs import run_benchmark

pytestmark = [pytest.mark.stateserver]


def test_a_small_run_states_the_target_and_a_verdict_on_a_projection() -> None:
    result = run_benchmark("stateserver_memory", "--sessions", "2000", "--no-save")

    assert result.returncode == 0, result.stderr
    assert "sessions:            2,000 of 1024 bytes" in result.stdout
    assert re.search(
        r"^RSS at target: +[0-9.]+ GB \(projected from 2,000 sessions\)$", result.stdout, re.M
    )
    assert re.search(
        r"^target: +1,000,000 sessions of 1 KB within 2 GB: (met|NOT met)$", result.stdout, re.M
    ), result.stdout


def test_the_result_is_saved_as_a_section_of_the_results_file(tmp_path: Path) -> None:
    results = tmp_path / "latest.json"
    results.write_text(json.dumps({"cycle": {"kept": True}}))

    measured = stateserver_memory.measure(1000, 1024)
    record("stateserver_memory", measured, results)

    saved = json.loads(results.read_text())
    assert saved["cycle"] == {"kept": True}  # other benchmarks' sections are left alone
    section = saved["stateserver_memory"]
    assert section["command"].startswith("python -m benchmarks.stateserver_memory")
    assert section["sessions"] == 1000 and section["projected"] is True
    assert section["target"] == {"sessions": 1_000_000, "size": 1024, "rss_bytes": 2 * 10**9}
    assert section["met"] == (section["rss_at_target_bytes"] <= 2 * 10**9)
    assert section["rss_full_bytes"] > section["rss_empty_bytes"] > 0
