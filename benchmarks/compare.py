"""Two runs of one benchmark, compared cell by cell: how far their numbers are apart, and whether they
find the same differences.

    python -m benchmarks.compare runs/quick runs/quick-2threads [--out spread.md]

Floats differ between machines, thread counts and library builds, and RL turns a last-bit difference
into other samples, so the same config run twice in two such settings prints other numbers. What
should replicate is what the paired test supports. This prints, per task and metric, the spread of
the cells (mean and largest |B − A| over matched (algorithm, seed) cells, beside the seeds' own 95%
half-width) and, for every paired comparison, whether each run finds it (✓) and in which direction.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import md_table
from benchmarks.stats import Result, paired_table, summarize, unique_results


def cell_spread(a: Iterable[Result], b: Iterable[Result], metrics: Sequence[str] = ("reward", "ras", "nag"),
                ) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {metric: {"cells", "differ", "mean_abs", "max_abs", "max_cell", "ci95"}}} over the (algorithm,
    seed) cells both runs have (``differ``: how many of them are not equal to the last bit); ``ci95`` is the
    mean over algorithms of run A's 95% half-width over seeds."""
    index = {(r["task"], r["algorithm"], r.get("seed")): r for r in unique_results(b)}
    a = unique_results(a)
    summary = summarize(a)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for metric in metrics:
        diffs: dict[str, list[tuple[float, str]]] = {}
        for r in a:
            other = index.get((r["task"], r["algorithm"], r.get("seed")))
            x, y = (r.get("metrics") or {}).get(metric), ((other or {}).get("metrics") or {}).get(metric)
            if other is None or not all(isinstance(v, int | float) and math.isfinite(v) for v in (x, y)):
                continue
            diffs.setdefault(r["task"], []).append((float(y) - float(x), f"{r['algorithm']} seed {r.get('seed')}"))
        for task, pairs in diffs.items():
            values = np.abs([d for d, _ in pairs])
            widths = [s[metric]["ci95"] for s in summary[task].values()
                      if metric in s and isinstance(s[metric].get("ci95"), int | float)]
            out.setdefault(task, {})[metric] = {
                "cells": len(pairs), "differ": int((values > 0).sum()), "mean_abs": float(values.mean()),
                "max_abs": float(values.max()),
                "max_cell": pairs[int(values.argmax())][1],
                "ci95": float(np.mean(widths)) if widths else math.nan}
    return out


def verdict(c: Mapping[str, Any] | None) -> str:
    """"A>B" / "A<B" where the paired interval excludes 0, "·" where it does not, "—" where absent."""
    if c is None:
        return "—"
    if not c["significant"]:
        return "·"
    return ">" if c["diff"] > 0 else "<"


def significance_agreement(a: Iterable[Result], b: Iterable[Result]) -> list[dict[str, Any]]:
    """One row per paired comparison of either run: its verdict in A and in B, and whether they agree."""
    tables = [paired_table(a), paired_table(b)]
    rows: dict[tuple[str, str, str, str], list[Mapping[str, Any] | None]] = {}
    for k, table in enumerate(tables):
        for task, by_metric in table.items():
            for metric, comparisons in by_metric.items():
                for c in comparisons:
                    rows.setdefault((task, metric, c["a"], c["b"]), [None, None])[k] = c
    return [{"task": t, "metric": m, "a": x, "b": y, "A": verdict(ca), "B": verdict(cb),
             "diff_A": None if ca is None else ca["diff"], "diff_B": None if cb is None else cb["diff"],
             "agree": verdict(ca) == verdict(cb)}
            for (t, m, x, y), (ca, cb) in rows.items()]


def compare_markdown(a: Sequence[Result], b: Sequence[Result], names: tuple[str, str] = ("A", "B")) -> str:
    """The spread table and the significance agreement, as Markdown."""
    na, nb = names
    lines = [f"# {na} against {nb}", "",
             "## Spread of the cells", "",
             f"|B − A| over the (algorithm, seed) cells both runs have (A = {na}, B = {nb}), beside the mean 95% "
             "half-width over seeds of A's algorithms: a spread well inside that half-width is noise the "
             "seeds already show.", ""]
    spread = cell_spread(a, b)
    header = ["task", "metric", "cells (differing)", "mean |B − A|", "max |B − A| (cell)", "95% half-width over seeds"]
    lines += md_table(header,
                      [[t, m, f"{s['cells']} ({s['differ']})", f"{s['mean_abs']:.3f}",
                        f"{s['max_abs']:.3f} ({s['max_cell']})", f"{s['ci95']:.3f}"]
                       for t, by in spread.items() for m, s in by.items()])
    rows = significance_agreement(a, b)
    both = [r for r in rows if "—" not in (r["A"], r["B"])]
    found = [r for r in both if r["A"] in "<>" or r["B"] in "<>"]
    agree = sum(r["agree"] for r in both)
    alone = len(rows) - len(both)
    lines += ["", "## Paired comparisons: does each run find the same differences?", "",
              f"{agree} of the {len(both)} comparisons both runs make get the same verdict in both (> or <: the "
              "95% paired interval excludes 0, · it does not)"
              + (f"; {alone} more are made by one run only (a task or algorithm the other lacks)" if alone else "")
              + ". The comparisons either run finds:", ""]
    lines += md_table(["task", "metric", "A − B", f"{na}", f"{nb}", "Δ in A", "Δ in B", "same"],
                      [[r["task"], r["metric"], f"{r['a']} − {r['b']}", r["A"], r["B"],
                        "—" if r["diff_A"] is None else f"{r['diff_A']:+.3f}",
                        "—" if r["diff_B"] is None else f"{r['diff_B']:+.3f}", "yes" if r["agree"] else "**no**"]
                       for r in found])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks.runner import load_results

    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    runs = []
    for path in (args.run_a, args.run_b):
        results = load_results(path) if path.is_dir() else []
        if not results:
            print(f"error: {path}: no results (expected the --out of a benchmark run)", file=sys.stderr)
            return 2
        runs.append(results)
    text = compare_markdown(*runs, names=(str(args.run_a), str(args.run_b)))
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
