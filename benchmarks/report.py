"""Turn ``benchmarks/results/latest.json`` into the chart and tables of ``docs/benchmarks.md``.

Run: ``python -m benchmarks.report [--results PATH] [--svg docs/benchmarks.svg]``. It writes the
bar chart of cycle medians (plain SVG, no plotting library) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import math
from html import escape
from pathlib import Path
from typing import Any

from benchmarks.results import LATEST, load

ROOT = Path(__file__).resolve().parent.parent
SVG = ROOT / "docs" / "benchmarks.svg"
COLOURS = {"ours": "#2b6cb0", "django": "#a0aec0", "floor": "#68d391"}
KIND_NAMES = {"ours": "django-statemodes", "django": "Django's engines", "floor": "floors"}

WIDTH, LEFT, RIGHT, TOP, ROW, BAR = 760, 230, 70, 56, 26, 18


def chart(cycle: dict[str, Any]) -> str:
    """A horizontal bar chart of median cycle times on a log scale."""
    engines = sorted(cycle["engines"].items(), key=lambda item: item[1]["median"])
    lowest = min(stat["median"] for _, stat in engines)
    highest = max(stat["median"] for _, stat in engines)
    first, last = math.floor(math.log10(lowest)), math.ceil(math.log10(highest))
    span = WIDTH - LEFT - RIGHT
    height = TOP + ROW * len(engines) + 40

    def x(value: float) -> float:
        return LEFT + span * (math.log10(value) - first) / (last - first)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">Session request cycle, '
        "median µs (log scale; shorter is faster)</text>",
    ]
    legend_x = LEFT
    for kind, colour in COLOURS.items():
        out.append(f'<rect x="{legend_x}" y="30" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{legend_x + 14}" y="39">{KIND_NAMES[kind]}</text>')
        legend_x += 150
    bottom = TOP + ROW * len(engines)
    for power in range(first, last + 1):
        gx = x(10**power)
        out.append(
            f'<line x1="{gx:.1f}" y1="{TOP - 6}" x2="{gx:.1f}" y2="{bottom}" stroke="#e2e8f0"/>'
        )
        out.append(
            f'<text x="{gx:.1f}" y="{bottom + 16}" text-anchor="middle">{10**power:,}</text>'
        )
    for row, (name, stat) in enumerate(engines):
        y = TOP + row * ROW
        colour = COLOURS.get(stat.get("kind", "django"), "#a0aec0")
        end = x(stat["median"])
        label = escape(f"{name}")
        out.append(f'<text x="{LEFT - 8}" y="{y + 13}" text-anchor="end">{label}</text>')
        out.append(
            f'<rect x="{LEFT}" y="{y}" width="{max(1.0, end - LEFT):.1f}" height="{BAR}" '
            f'fill="{colour}"/>'
        )
        out.append(f'<text x="{end + 4:.1f}" y="{y + 13}">{stat["median"]:,.1f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def tables(results: dict[str, Any]) -> str:
    lines: list[str] = []
    cycle = results.get("cycle")
    if cycle:
        lines += [
            "| engine | median µs | p95 µs | round trips | bytes on the wire | CPU µs here "
            "| CPU µs server |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]

        def number(stat: dict[str, Any], key: str, digits: int = 1) -> str:
            return "-" if key not in stat else f"{stat[key]:,.{digits}f}"

        for name, stat in sorted(cycle["engines"].items(), key=lambda i: i[1]["median"]):
            lines.append(
                f"| `{name}` ({stat['label']}) | {stat['median']:,.1f} | {stat['p95']:,.1f} "
                f"| {number(stat, 'round_trips', 2)} | {number(stat, 'bytes', 0)} "
                f"| {number(stat, 'client_cpu')} | {number(stat, 'server_cpu')} |"
            )
        lines += [
            "",
            "| ratio of medians | value | rounds | target | met |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for row in cycle["ratios"]:
            target = "-" if row["target"] is None else f"≤ {row['target']}"
            met = "-" if row["met"] is None else ("yes" if row["met"] else "**no**")
            spread = f"{row['low']:.2f}-{row['high']:.2f}" if "low" in row else "-"
            lines.append(
                f"| `{row['engine']}` / `{row['baseline']}` | {row['ratio']:.2f} | {spread} "
                f"| {target} | {met} |"
            )
        lines.append("")
    handoff = results.get("handoff")
    if handoff:
        lines += ["| engine | p50 ms | p95 ms | met (p50 ≤ 5 ms) |", "| --- | ---: | ---: | --- |"]
        for name, stat in handoff["engines"].items():
            met = "yes" if stat["median"] <= handoff["target_p50"] else "**no**"
            lines.append(f"| `{name}` | {stat['median']:.2f} | {stat['p95']:.2f} | {met} |")
        lines.append("")
    lost = results.get("lost_updates")
    if lost:
        lines += [
            "| engine | server | answered 200 | final counter | lost |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for name, row in lost["engines"].items():
            lines.append(
                f"| `{name}` | `{row['server']}` | {row['answered_200']} | {row['final_counter']}"
                f" | {row['lost']} ({row['lost_percent']:.0f} %) |"
            )
        lines.append("")
    throughput = results.get("throughput")
    if throughput:
        lines += [
            "| engine | req/s (median) | / no-session floor, median (min-max) | non-2xx |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, row in throughput["engines"].items():
            ratios = row.get("ratio_to_none") or [1.0]
            lines.append(
                f"| `{name}` | {row['requests_per_second']:,.0f} "
                f"| {sorted(ratios)[len(ratios) // 2]:.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
                f"| {row['non_2xx']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--results", type=Path, default=LATEST)
    parser.add_argument("--svg", type=Path, default=SVG)
    args = parser.parse_args(argv)
    results = load(args.results)
    if "cycle" in results:
        args.svg.write_text(chart(results["cycle"]))
        print(f"wrote {args.svg}\n")
    print(tables(results))


if __name__ == "__main__":
    main()
