"""Run every benchmark of this package in turn, then regenerate the chart: ``python -m benchmarks``.

Each script runs in its own interpreter, as it does when run alone: providers are cached per
process, so a second script in the same process would reuse the first one's connections to
servers (a state server on a port that is gone) and settings.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPTS = ("cycle", "handoff", "lost_updates", "throughput", "asgi", "serializers", "report")

if __name__ == "__main__":
    for name in SCRIPTS:
        print(f"\n== benchmarks.{name} ==", flush=True)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)
