"""Tests for benchmarks/stats.py and benchmarks/paper.py. Expected numbers are worked by hand in comments
(t critical values from a printed t table); none is copied from the code's own output."""

import math

import pytest

from benchmarks import paper
from benchmarks.stats import (
    FORMULA,
    compute_table,
    compute_totals,
    curves,
    mean_ci,
    relative_improvement,
    relative_table,
    summarize,
    summarize_base,
    t_ppf,
)

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}  # two-sided 95% t table


def rec(task, algorithm, seed, metrics, **extra):
    return {"schema": 1, "task": task, "algorithm": algorithm, "algo": algorithm, "seed": seed,
            "metrics": metrics, **extra}


# ------------------------------------------------------------------------------------------ t / mean_ci
@pytest.mark.parametrize("dof", sorted(T975))
def test_t_ppf_matches_t_table(dof):
    assert t_ppf(0.975, dof) == pytest.approx(T975[dof], abs=5e-4)


def test_t_ppf_symmetry_and_limits():
    assert t_ppf(0.025, 4) == pytest.approx(-2.776, abs=5e-4)
    assert t_ppf(0.95, 3) == pytest.approx(2.353, abs=5e-4)  # one-sided 95%, 3 dof
    assert t_ppf(0.975, 100_000) == pytest.approx(1.960, abs=5e-4)  # -> normal
    assert t_ppf(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="0 < q < 1"):
        t_ppf(1.0, 3)


def test_mean_ci_hand_numbers():
    # [1, 2, 3]: mean 2, sd 1, half-width 4.303 / sqrt(3) = 2.484
    mean, half = mean_ci([1, 2, 3])
    assert mean == 2.0
    assert half == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert half == pytest.approx(2.484, abs=1e-3)
    # [2, 4, 6, 8] at 90%: mean 5, sd sqrt((9+1+1+9)/3) = 2.582, t_{0.95,3} = 2.353 -> 2.353*2.582/2 = 3.038
    mean, half = mean_ci([2, 4, 6, 8], confidence=0.90)
    assert mean == 5.0
    assert half == pytest.approx(3.038, abs=2e-3)
    # all equal: zero width
    assert mean_ci([0.4, 0.4, 0.4]) == (pytest.approx(0.4), pytest.approx(0.0, abs=1e-12))


def test_mean_ci_one_and_zero_values_and_nans():
    mean, half = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(half)
    mean, half = mean_ci([])
    assert math.isnan(mean) and math.isnan(half)
    # nan/None dropped: [1, 3] -> mean 2, sd sqrt(2), 12.706 * sqrt(2) / sqrt(2) = 12.706
    mean, half = mean_ci([1.0, float("nan"), None, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(12.706, abs=1e-3)


# ------------------------------------------------------------------------------------------ relative
def test_relative_improvement_signs_and_zero():
    assert relative_improvement(0.6, 0.5) == pytest.approx(0.2)  # 0.1 / 0.5
    assert relative_improvement(0.0, 0.5) == pytest.approx(-1.0)
    assert relative_improvement(-0.1, -0.2) == pytest.approx(0.5)  # better than a negative baseline: +0.1/0.2
    assert relative_improvement(-0.3, -0.2) == pytest.approx(-0.5)  # worse: -0.1/0.2
    assert relative_improvement(0.3, -0.1) == pytest.approx(4.0)  # 0.4 / 0.1
    assert math.isnan(relative_improvement(0.3, 0.0))
    assert math.isnan(relative_improvement(float("nan"), 0.2))


def hand_results():
    """Task A: grao ras 0.5/0.6/0.7, sft 0.4 x3. Task B: grao 0.2/0.4, sft -0.2/-0.4. Task C: sft 0."""
    return [
        rec("A", "grao", 2, {"ras": 0.7, "reward": 1.0}),
        rec("A", "grao", 0, {"ras": 0.5, "reward": 1.0}),
        rec("A", "grao", 1, {"ras": 0.6}),
        rec("A", "sft", 0, {"ras": 0.4}), rec("A", "sft", 1, {"ras": 0.4}), rec("A", "sft", 2, {"ras": 0.4}),
        rec("B", "grao", 0, {"ras": 0.2}), rec("B", "grao", 1, {"ras": 0.4}),
        rec("B", "sft", 0, {"ras": -0.2}), rec("B", "sft", 1, {"ras": 99.0}),
        rec("B", "sft", 1, {"ras": -0.4}),  # rerun of the same cell: the last record wins
        rec("C", "grao", 0, {"ras": 0.3}), rec("C", "sft", 0, {"ras": 0.0}),
    ]


def test_summarize_hand_numbers():
    s = summarize(hand_results())
    assert list(s) == ["A", "B", "C"]
    assert list(s["A"]) == ["grao", "sft"]
    a = s["A"]["grao"]["ras"]
    assert a["values"] == [0.5, 0.6, 0.7]  # ordered by seed
    assert a["n"] == 3 and a["mean"] == pytest.approx(0.6)
    assert a["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), abs=1e-4)  # sd 0.1
    assert s["A"]["grao"]["reward"]["n"] == 2  # seed 1 lacks it
    assert s["A"]["sft"]["ras"]["ci95"] == pytest.approx(0.0)
    b = s["B"]["sft"]["ras"]
    assert b["values"] == [-0.2, -0.4] and b["mean"] == pytest.approx(-0.3)
    # two seeds: sd = 0.1*sqrt(2), half = 12.706 * 0.1414 / 1.414 = 1.2706
    assert s["B"]["grao"]["ras"]["ci95"] == pytest.approx(1.2706, abs=1e-3)
    assert math.isnan(s["C"]["grao"]["ras"]["ci95"])


def test_relative_table_mean_of_per_cell_ratios():
    t = relative_table(summarize(hand_results()), "ras")
    assert t["target"] == "grao" and t["metric"] == "ras" and t["formula"] == FORMULA
    sft = t["baselines"]["sft"]
    assert list(t["baselines"]) == ["sft"]
    assert sft["cells"]["A"]["rel"] == pytest.approx(0.5)  # (0.6 - 0.4) / 0.4
    assert sft["cells"]["B"]["rel"] == pytest.approx(2.0)  # (0.3 - (-0.3)) / 0.3
    assert sft["cells"]["B"]["target"] == pytest.approx(0.3)
    assert sft["cells"]["B"]["baseline"] == pytest.approx(-0.3)
    assert math.isnan(sft["cells"]["C"]["rel"])  # baseline 0
    assert sft["cells_used"] == 2
    assert sft["mean"] == pytest.approx(1.25)  # (0.5 + 2.0) / 2, not (0.45 - 0.05)/0.05 of the averages
    # explicit baselines, a metric the baseline lacks, another target
    t2 = relative_table(summarize(hand_results()), "reward", baselines=["sft"])
    assert math.isnan(t2["baselines"]["sft"]["mean"]) and t2["baselines"]["sft"]["cells_used"] == 0
    t3 = relative_table(summarize(hand_results()), "ras", target="sft")
    assert t3["baselines"]["grao"]["cells"]["A"]["rel"] == pytest.approx(-1 / 3)  # (0.4 - 0.6) / 0.6


def test_formula_states_the_averaging():
    assert "(m_T − m_B) / |m_B|" in FORMULA and "mean of the per-cell ratios" in FORMULA


def test_summarize_base_averages_within_seed_then_over_seeds():
    rs = [rec("A", "grao", 0, {}, base_metrics={"reward": 0.1}),
          rec("A", "sft", 0, {}, base_metrics={"reward": 0.3}),
          rec("A", "grao", 1, {}, base_metrics={"reward": 0.4}), rec("B", "sft", 0, {})]
    base = summarize_base(rs)
    assert list(base) == ["A"]
    assert base["A"]["reward"]["values"] == pytest.approx([0.2, 0.4])  # seed 0: (0.1+0.3)/2
    assert base["A"]["reward"]["mean"] == pytest.approx(0.3)


def test_curves_only_steps_all_seeds_have():
    h0 = [{"step": 5, "eval/reward": 0.0}, {"step": 10, "eval/reward": 0.2}, {"step": 11, "loss": 1.0}]
    h1 = [{"step": 10, "eval/reward": 0.4}, {"step": 15, "eval/reward": 0.9}]
    c = curves([rec("A", "grao", 0, {}, history=h0), rec("A", "grao", 1, {}, history=h1),
                rec("A", "sft", 0, {}, history=[{"step": 1, "loss": 2.0}])])
    assert list(c["A"]) == ["grao"]  # sft never logged the key
    steps, mean, lo, hi = c["A"]["grao"]
    assert steps.tolist() == [10]
    assert mean[0] == pytest.approx(0.3)
    assert hi[0] - mean[0] == pytest.approx(1.2706, abs=1e-3)  # same spread as the 2-seed case above
    assert mean[0] - lo[0] == pytest.approx(hi[0] - mean[0])
    one = curves([rec("A", "grao", 0, {}, history=h0)])["A"]["grao"]
    assert one[0].tolist() == [5, 10] and math.isnan(one[2][0])  # one seed: no band


def test_compute_table_and_totals():
    def c(task, algo, seed, gen, wall):
        return rec(task, algo, seed, {}, tokens_generated=gen, tokens_trained=10, optimizer_steps=30,
                   wall_time_s=wall)

    rs = [c("A", "grao", 0, 100, 1.0), c("A", "grao", 1, 300, 3.0), c("B", "grao", 0, 50, 0.5),
          rec("B", "sft", 0, {})]
    t = compute_table(rs)
    assert t["A"]["grao"]["tokens_generated"] == 200 and t["A"]["grao"]["wall_time_s"] == 2.0
    assert t["A"]["grao"]["seeds"] == 2 and t["A"]["grao"]["optimizer_steps"] == 30
    assert math.isnan(t["B"]["sft"]["tokens_trained"]) and t["B"]["sft"]["seeds"] == 0
    tot = compute_totals(t)
    assert tot["grao"]["tokens_generated"] == 250 and tot["grao"]["tasks"] == 2  # 200 + 50
    assert tot["grao"]["wall_time_s"] == pytest.approx(2.5)


# ------------------------------------------------------------------------------------------ paper
def test_paper_headline_reproduces_mean_of_cell_ratios():
    h = paper.headline("ras")
    assert {k: round(v, 1) for k, v in h.items()} == {"SFT": 57.7, "DPO": 17.7, "PPO": 6.8, "GRPO": 6.4}
    # SFT by hand: (64.60-30.95)/30.95 = 1.0872, (70.84-43.45)/43.45 = 0.6304,
    # (68.01-51.43)/51.43 = 0.3224, (76.82-60.52)/60.52 = 0.2693 -> mean 0.5773
    assert h["SFT"] == pytest.approx(100 * (1.0872 + 0.6304 + 0.3224 + 0.2693) / 4, abs=0.01)
    # The paper's claimed SFT/DPO follow from this formula, its PPO/GRPO do not.
    assert round(h["SFT"], 1) == round(paper.CLAIMED_HEADLINE["SFT"], 1)
    assert abs(h["PPO"] - paper.CLAIMED_HEADLINE["PPO"]) > 1
    assert abs(h["GRPO"] - paper.CLAIMED_HEADLINE["GRPO"]) > 1


def test_paper_table_values():
    assert paper.value("Moonlight-16B-A3B", "helpful", "SFT", "nag") == -1.64
    assert paper.value("Qwen2.5-7B", "harmless", "GRAO", "RAS") == 68.01
    assert len(paper.TABLE) == 4 and all(set(row) == set(paper.ALGORITHMS) for row in paper.TABLE.values())
