"""Results files: each benchmark writes its section of ``benchmarks/results/latest.json``."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

LATEST = Path(__file__).resolve().parent / "results" / "latest.json"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as lines:
            cpu = next(line.split(":", 1)[1].strip() for line in lines if "model name" in line)
    except (OSError, StopIteration):
        pass
    import django

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "platform": platform.platform(),
    }


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(samples: list[float]) -> dict[str, float]:
    """Median, p95 and count of timings already in the unit to report."""
    return {
        "median": statistics.median(samples),
        "p95": percentile(samples, 0.95),
        "n": len(samples),
    }


def record(section: str, data: dict[str, Any], path: Path | None = LATEST) -> None:
    """Replace ``section`` of the results file (merging nothing else), with the command line."""
    if path is None:
        return
    results: dict[str, Any] = {}
    if path.exists():
        results = json.loads(path.read_text())
    results["machine"] = machine()
    results[section] = {
        "command": "python -m " + " ".join([f"benchmarks.{section}", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),  # Django sets TZ
        **data,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def load(path: Path = LATEST) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data
