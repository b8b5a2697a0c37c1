"""Run every benchmark of this package in turn, then regenerate the chart: ``python -m benchmarks``."""

from __future__ import annotations

from benchmarks import cycle, handoff, lost_updates, report, throughput

if __name__ == "__main__":
    for benchmark in (cycle, handoff, lost_updates, throughput):
        print(f"\n== {benchmark.__name__} ==", flush=True)
        benchmark.main([])
    print("\n== report ==", flush=True)
    report.main([])
