"""benchmarks.compare: two runs of one config, cell by cell and by the paired test's verdicts."""

import copy

import numpy as np
import pytest
from test_bench_stats import prompt_results

from benchmarks.compare import cell_spread, compare_markdown, main, significance_agreement
from benchmarks.stats import summarize


def two_runs():
    a = prompt_results({"grao": 0.4, "sft": 0.0}, n=40, task="T")
    b = copy.deepcopy(a)
    for r in b:  # run B: every grao cell 0.01 higher, sft seed 1 0.05 lower
        if r["algorithm"] == "grao":
            r["metrics"]["reward"] += 0.01
        if r["algorithm"] == "sft" and r["seed"] == 1:
            r["metrics"]["reward"] -= 0.05
    return a, b


def test_cell_spread_by_hand():
    a, b = two_runs()
    spread = cell_spread(a, b)["T"]["reward"]
    assert spread["cells"] == 6 and spread["differ"] == 4  # 2 algorithms x 3 seeds; 3 grao cells + sft seed 1
    assert spread["mean_abs"] == pytest.approx((3 * 0.01 + 0.05) / 6)
    assert spread["max_abs"] == pytest.approx(0.05) and spread["max_cell"] == "sft seed 1"
    widths = [s["reward"]["ci95"] for s in summarize(a)["T"].values()]
    assert spread["ci95"] == pytest.approx(np.mean(widths))
    assert cell_spread(a, a)["T"]["reward"]["max_abs"] == 0.0


def test_identical_runs_agree_on_every_verdict_and_a_lost_effect_is_flagged():
    a, _ = two_runs()
    rows = significance_agreement(a, a)
    assert rows and all(r["agree"] for r in rows)
    grao = next(r for r in rows if (r["a"], r["b"], r["metric"]) == ("grao", "base model", "reward"))
    assert grao["A"] == grao["B"] == ">"
    b = prompt_results({"grao": 0.0, "sft": 0.0}, n=40, task="T")  # the effect is gone in run B
    rows = {(r["a"], r["b"], r["metric"]): r for r in significance_agreement(a, b)}
    assert rows["grao", "base model", "reward"]["B"] == "·" and not rows["grao", "base model", "reward"]["agree"]
    assert "| T | reward | grao − base model | > | · |" in compare_markdown(a, b)
    without_sft = [r for r in a if r["algorithm"] == "grao"]  # grao − sft and sft − base: run A's only
    text = compare_markdown(a, without_sft)
    assert "of the 2 comparisons both runs make" in text and "4 more are made by one run only" in text


def test_the_command_line_reads_two_run_folders(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), str(tmp_path)]) == 2
    assert "no results" in capsys.readouterr().err
