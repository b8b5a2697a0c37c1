"""The benchmark harness keeps working (it runs a few cycles; speed is never asserted here)."""

from __future__ import annotations

import re

from tests.benchmark_runs import run_benchmark


def run_cycle(*args: str) -> str:
    result = run_benchmark("cycle", *args, "--iterations", "20", "--no-save")
    assert result.returncode == 0, result.stderr
    return result.stdout


def median(output: str, engine: str) -> float:
    match = re.search(rf"^{re.escape(engine)}\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)$", output, re.M)
    assert match, f"no numbers for {engine} in:\n{output}"
    assert int(match.group(3)) >= 20
    return float(match.group(1))


def test_cycle_harness_reports_inproc_beside_djangos_locmem_cache() -> None:
    output = run_cycle("--engines", "inproc", "--baselines", "django-cache-locmem")

    assert median(output, "inproc") > 0
    assert median(output, "django-cache-locmem") > 0
    assert re.search(r"^inproc / django-cache-locmem\s+[0-9.]+\s+<= 0\.25", output, re.M), output


def test_cycle_harness_rejects_an_unknown_engine_by_name() -> None:
    result = run_benchmark("cycle", "--engines", "nosuch", "--no-save", timeout=60)

    assert result.returncode != 0
    assert "unknown engine 'nosuch'" in result.stderr


def test_asgi_harness_serves_an_engine_under_uvicorn() -> None:
    result = run_benchmark(
        "asgi", "--engines", "inproc", "--baselines", "none", "--no-floor",
        "--requests", "50", "--rounds", "1", "--no-save",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"^inproc\s+[0-9,]+ \(", result.stdout, re.M), result.stdout


def test_middleware_harness_compares_with_djangos_pair_on_a_larger_urlconf() -> None:
    result = run_benchmark(
        "middleware", "--routes", "50", "--iterations", "200", "--rounds", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "50 other routes" in result.stdout
    for row in ("read-write", "django read-write", "floor"):
        assert re.search(rf"^{row}\s+-?[0-9.]+ \(", result.stdout, re.M), result.stdout
    assert re.search(r"^this tree\s+[0-9.]+ \(", result.stdout, re.M), result.stdout


def test_serializers_harness_compares_djangos_json_with_the_fast_one() -> None:
    result = run_benchmark("serializers", "--rounds", "1", "--sizes", "100,1000")
    assert result.returncode == 0, result.stderr
    assert re.search(
        r"^\s+1000 B\s+[0-9.]+ \(.*\)\s+[0-9.]+ \(.*\)\s+[0-9.]+$", result.stdout, re.M
    )
