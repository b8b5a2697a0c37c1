"""Load and save of one session through Django's ``JSONSerializer`` and ``FastJSONSerializer``.

A session of N bytes of JSON (a cart of small dicts: strings, integers, floats) is written
(``dumps``) and read (``loads``), as a request cycle of an out-of-process mode does. The two
serializers alternate, round after round, so drift on a shared machine hits them alike; CPU
time (``time.process_time_ns``) leaves out time spent by other processes. Reported per size:
the median µs per load and save over the rounds, the range, and fast / Django's.

Run: ``python -m benchmarks.serializers [--rounds R] [--sizes 100,1000,...]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time
from typing import Any

from django.core.signing import JSONSerializer

from django_statemodes.serializers import FastJSONSerializer

SIZES = (100, 1_000, 10_000, 100_000)
# Total bytes serialized per measurement: small sessions run more times, so each measurement
# lasts about as long whatever the size.
BYTES_PER_MEASUREMENT = 20_000_000


def session(size: int, seed: int = 1) -> dict[str, Any]:
    """A session whose JSON is about ``size`` bytes."""
    rng = random.Random(seed)
    data: dict[str, Any] = {}
    while len(json.dumps(data, separators=(",", ":"))) < size:
        data[f"item-{len(data)}"] = {
            "name": "".join(rng.choices(string.ascii_letters, k=20)),
            "qty": rng.randint(0, 10**6),
            "price": round(rng.random() * 100, 2),
            "tags": ["a", "bb"],
        }
    return data


def cycle_us(serializer: Any, data: dict[str, Any], times: int) -> float:
    started = time.process_time_ns()
    for _ in range(times):
        serializer.loads(serializer.dumps(data))
    return (time.process_time_ns() - started) / times / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    serializers: dict[str, Any] = {"django": JSONSerializer(), "fast": FastJSONSerializer()}
    samples: dict[int, dict[str, list[float]]] = {
        size: {name: [] for name in serializers} for size in sizes
    }
    for size in sizes:
        data = session(size)
        for name, serializer in serializers.items():  # both must read what they wrote
            assert serializer.loads(serializer.dumps(data)) == data, name
        times = max(10, BYTES_PER_MEASUREMENT // size // 100)
        for round_ in range(args.rounds):
            order = list(serializers) if round_ % 2 == 0 else list(reversed(serializers))
            for name in order:
                samples[size][name].append(cycle_us(serializers[name], data, times))

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):9.1f} ({min(values):.1f}-{max(values):.1f})"

    print(f"µs per dumps + loads, median (min-max) of {args.rounds} interleaved rounds")
    print(f"{'session':>10}{'Django JSONSerializer':>30}{'FastJSONSerializer':>30}{'ratio':>8}")
    for size in sizes:
        django, fast = samples[size]["django"], samples[size]["fast"]
        ratio = statistics.median(fast) / statistics.median(django)
        print(f"{size:>8} B{spread(django):>30}{spread(fast):>30}{ratio:8.2f}")


if __name__ == "__main__":
    main()
