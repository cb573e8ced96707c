"""``python -m benchmarks run [CONFIG] [--out DIR] [--jobs N | --executor ray [--address ADDR]]``
and ``python -m benchmarks report DIR``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from algos.errors import OutputError, check_output_folder, cleanup, error_text
from algos.policy import CheckpointError
from benchmarks import config as bench_config
from benchmarks import executors
from benchmarks.report import write_report
from benchmarks.runner import CellsFailed, load_results, run
from textenv import TaskError


def executor_problem(kind: str, jobs: int | None, address: str | None) -> str | None:
    """What is wrong with the executor options, if anything."""
    if jobs is not None and jobs < 1:
        return f"--jobs must be at least 1, got {jobs}"
    if kind == "ray" and jobs is not None:
        return "--jobs is for the local executor; with --executor ray the config's [resources] size each cell"
    if kind != "ray" and address is not None:
        return "--address needs --executor ray"
    return None


def saved_config(path: Path) -> bench_config.BenchConfig:
    """The config a run saved in its ``config.json``; any damage is a BenchConfigError naming the file."""
    try:
        raw = json.loads(path.read_text())
        return bench_config.parse(raw["config"], where=f"{raw['path']} (as saved in {path})")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bench_config.BenchConfigError(f"{path}: not valid JSON ({err})") from err
    except (KeyError, TypeError) as err:
        raise bench_config.BenchConfigError(f"{path}: not a saved benchmark config (needs \"path\" and "
                                            f"\"config\"): {err!r}") from err


# Faults of the input that stop a run before any cell trains (a base model path that is no model, a
# config the runner refuses, an unwritable folder): "error: <message>" and exit code 2, not a traceback.
RUN_ERRORS = (bench_config.BenchConfigError, CheckpointError, OutputError, TaskError)


def report_step(results: list[dict[str, Any]], out: Path, **report_options: Any) -> dict[str, Any] | None:
    """Write the report of ``results`` into ``out``; None after saying on stderr what could not be written.

    The result files are written before the report and never touched by it, so a failure here (a full disk
    while saving a plot, say) loses nothing: the message says so and how to rebuild the report."""
    try:
        return write_report(results, out, **report_options)
    except OSError as err:
        print(f"error: the report was not finished: {error_text(err)}\nthe results are intact "
              f"({len(results)} cell(s) in {out / 'results'}); once the cause is fixed (e.g. disk space freed), "
              f"rebuild the report with: python -m benchmarks report {out}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    run_p = sub.add_parser("run", help="train and evaluate every (task, algorithm, seed) cell, then report")
    run_p.add_argument("config", nargs="?", default="quick",
                       help="a TOML file or a shipped config: quick (default), paper, ablation, hh")
    run_p.add_argument("--out", type=Path, default=None, help="output directory (default runs/<config name>)")
    run_p.add_argument("--no-progress", action="store_true", help="no per-step progress bars")
    run_p.add_argument("--jobs", type=int, default=None,
                       help="run cells in N local worker processes (default 1: one after the other in this process)")
    run_p.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local (default) or ray: each cell a Ray task with the config's [resources]")
    run_p.add_argument("--address", default=None,
                       help="with --executor ray: the cluster to join (e.g. auto or ray://host:10001); "
                            "default: start Ray on this machine")
    report_p = sub.add_parser("report", help="rebuild report.md, report.json and plots from a run directory")
    report_p.add_argument("out", type=Path)
    sub.add_parser("configs", help="list the shipped configs")
    args = parser.parse_args(argv)

    if args.command in (None, "run"):
        name = getattr(args, "config", "quick")
        try:
            cfg = bench_config.load(name)
        except bench_config.BenchConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        out = args.out if getattr(args, "out", None) else Path("runs") / Path(cfg.path).stem
        opts = vars(args)  # without a subcommand, args has none of run's options
        kind, jobs, address = opts.get("executor", "local"), opts.get("jobs"), opts.get("address")
        problem = executor_problem(kind, jobs, address)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        try:
            check_output_folder(out)
        except OutputError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{cfg.title}: {len(cfg.tasks)} task(s) x {len(cfg.algorithms)} algorithm(s) x "
              f"{len(cfg.seeds)} seed(s) -> {out}", flush=True)
        start = time.perf_counter()
        try:
            executor = executors.make(kind, jobs or 1, address, cfg.resources.cpus_per_cell,
                                      cfg.resources.gpus_per_cell, where=f"{cfg.path} [resources]")
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            with cleanup(executor.close, f"closing the {kind} executor"):
                results = run(cfg, out, progress=not getattr(args, "no_progress", False), executor=executor)
        except CellsFailed as err:
            print(f"\nerror: {error_text(err)}\nno report written; the finished cells are kept in "
                  f"{out / 'results'}", file=sys.stderr)
            return 1
        except RUN_ERRORS as err:
            print(f"error: {error_text(err)}", file=sys.stderr)
            return 2
        summary = report_step(results, out, title=cfg.title, paper_protocol=cfg.paper_protocol, target=cfg.target)
        if summary is None:
            return 1
        print(f"\nfinished in {time.perf_counter() - start:.0f}s; report: {out / 'report.md'}")
        print(summary.get("markdown_summary", ""))
        return 0
    if args.command == "report":
        if not args.out.is_dir():
            print(f"error: {args.out}: no such run directory (expected the --out of a benchmark run)",
                  file=sys.stderr)
            return 2
        cfg_path = args.out / "config.json"
        title, paper, target = str(args.out), False, "grao"
        if cfg_path.exists():
            try:
                parsed = saved_config(cfg_path)
            except bench_config.BenchConfigError as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            title, paper, target = parsed.title, parsed.paper_protocol, parsed.target
        summary = report_step(load_results(args.out), args.out, title=title, paper_protocol=paper, target=target)
        if summary is None:
            return 1
        print(summary.get("markdown_summary", ""))
        return 0
    if args.command == "configs":
        for path in sorted(bench_config.CONFIG_DIR.glob("*.toml")):
            print(f"{path.stem:10s} {bench_config.load(path).title}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
