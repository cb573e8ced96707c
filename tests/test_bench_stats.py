"""Tests for benchmarks/stats.py and benchmarks/paper.py. Expected numbers are worked by hand in comments
(t critical values from a printed t table); none is copied from the code's own output."""

import math

import numpy as np
import pytest
import scipy.stats

from benchmarks import paper
from benchmarks.stats import (
    BASE,
    FORMULA,
    MDE_FACTOR,
    compare,
    compute_table,
    compute_totals,
    crossed_se,
    curve_auc,
    curves,
    first_reach,
    mean_ci,
    paired_difference,
    paired_matrix,
    paired_table,
    probability_of_improvement,
    prompt_records,
    relative_improvement,
    relative_table,
    run_curve,
    sample_efficiency,
    summarize,
    summarize_base,
    t_ppf,
    threshold_of,
)

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045}  # two-sided 95% t table


def rec(task, algorithm, seed, metrics, **extra):
    return {"schema": 1, "task": task, "algorithm": algorithm, "algo": algorithm, "seed": seed,
            "metrics": metrics, **extra}


# ------------------------------------------------------------------------------------------ t / mean_ci
@pytest.mark.parametrize("dof", sorted(T975))
def test_t_ppf_matches_t_table(dof):
    assert t_ppf(0.975, dof) == pytest.approx(T975[dof], abs=5e-4)


@pytest.mark.parametrize("q", [0.6, 0.9, 0.95, 0.975, 0.995, 0.025])
@pytest.mark.parametrize("dof", [1, 2, 3, 4, 7, 29, 1000])
def test_t_ppf_is_scipys(q, dof):
    assert t_ppf(q, dof) == pytest.approx(scipy.stats.t.ppf(q, dof), rel=1e-12)


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


# ------------------------------------------------------------------------------------------ paired
def rows(values, prompts=None, key="reward", subsets=None):
    prompts = prompts or [f"p{i}" for i in range(len(values))]
    out = [{"prompt": p, "reference": "r", "completion": "c", key: v} for p, v in zip(prompts, values, strict=True)]
    for r, s in zip(out, subsets or [], strict=False):
        r["subset"] = s
    return out


def metrics_of(records):
    """Means of the per-prompt values, overall and per subset, as evaluate_examples writes them."""
    keys = [k for k in records[0] if k not in {"prompt", "reference", "completion", "subset"}]
    out = {k: float(np.mean([r[k] for r in records if r[k] is not None])) for k in keys}
    for s in sorted({r["subset"] for r in records if r.get("subset")}):
        part = [r for r in records if r.get("subset") == s]
        out[f"{s}/n"] = float(len(part))
        out |= {f"{s}/{k}": float(np.mean([r[k] for r in part if r[k] is not None])) for k in keys}
    return out


def prompt_results(effects, seeds=(0, 1, 2), n=60, task="T", seed_sd=0.02, noise=0.3, rng_seed=0, subsets=None):
    """Results with per-prompt records: reward = prompt difficulty + seed effect + effect + noise; the base
    model has effect 0. ``effects`` maps algorithm -> true mean gain over the base model."""
    rng = np.random.default_rng(rng_seed)
    prompts = [f"{i}+{i}=" for i in range(n)]
    difficulty = rng.normal(0.5, 0.2, n)
    out = []
    for seed in seeds:
        base = difficulty + rng.normal(0, noise, n)
        base_rows = rows([float(x) for x in base], prompts, subsets=subsets)
        for r, x in zip(base_rows, base, strict=True):
            r["ras"] = float(x > 0.5)
        for algo, effect in effects.items():
            x = difficulty + effect + rng.normal(0, seed_sd) + rng.normal(0, noise, n)
            records = rows([float(v) for v in x], prompts, subsets=subsets)
            for r, v in zip(records, x, strict=True):
                r["ras"] = float(v > 0.5)
            out.append({"task": task, "algorithm": algo, "algo": algo, "seed": seed, "metrics": metrics_of(records),
                        "base_metrics": metrics_of(base_rows), "examples": records, "base_examples": base_rows,
                        "history": []})
    return out


def test_crossed_se_and_mde_by_hand():
    d = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 8.0]])
    # grand 3.5; seed means 2, 5; prompt means 2, 3, 5.5
    # MS_seed = 3 * (1.5² + 1.5²) / 1 = 13.5; MS_prompt = 2 * (1.5² + 0.5² + 2²) / 2 = 6.5
    # residuals ±0.5, ±0.5, ∓1 -> SS 3 -> MS_resid = 3 / (1 * 2) = 1.5
    # σ²_seed = (13.5 - 1.5)/3 = 4, σ²_prompt = (6.5 - 1.5)/2 = 2.5 -> SE² = 4/2 + 2.5/3 + 1.5/6 = 3.0833
    assert crossed_se(d) == pytest.approx(math.sqrt(3.0833333), rel=1e-6)
    # one seed: one factor, SE = sd / sqrt(n): [1, 2, 3] -> 1 / sqrt(3)
    assert crossed_se(np.array([[1.0, 2.0, 3.0]])) == pytest.approx(1 / math.sqrt(3))
    # negative variance components are clipped: all rows equal -> σ²_seed 0, only prompts vary
    same = np.array([[0.0, 1.0], [0.0, 1.0]])  # MS_prompt = 2 * 2 * 0.25 / 1 = 1, MS_seed = MS_resid = 0
    assert crossed_se(same) == pytest.approx(math.sqrt(0.5 / 2))  # σ²_prompt = 1/2, / P=2


def test_mde_is_2_8_bootstrap_standard_errors_by_hand():
    assert abs(MDE_FACTOR - (1.959964 + 0.841621)) < 1e-5  # z_0.975 + z_0.80 = 2.80
    d = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 8.0]])
    # Exact variance of the replicate mean wᵀdv/(SP), w ~ Mult(S, 1/S), v ~ Mult(P, 1/P):
    #   seeds: Σ_s (r_s − r̄)² / S² with row means r = 2, 5 -> (2.25 + 2.25) / 4 = 1.125
    #   prompts given seeds: Σ_p [(1 − 1/S)(Σ_s e_sp)² + Σ_s e_sp²] / (SP)², e = d − row mean
    #   = rows (−1, 0, 1), (−2, −1, 3): [(½·9 + 5) + (½·1 + 1) + (½·16 + 10)] / 36 = 29/36 = 0.8056
    # SE = sqrt(1.9306) = 1.3894; MDE = 2.8016 * 1.3894 = 3.893
    out = paired_difference(d)
    assert out["diff"] == pytest.approx(3.5) and out["seeds"] == 2 and out["prompts"] == 3
    assert out["se"] == pytest.approx(1.3894, rel=0.03)  # 4000 replicates: ~1% Monte Carlo error
    assert out["mde"] == pytest.approx(MDE_FACTOR * out["se"])
    assert out["mde"] == pytest.approx(3.893, rel=0.03)
    assert out["se_model"] == pytest.approx(crossed_se(d))


def test_bootstrap_interval_covers_a_known_paired_difference():
    covered, significant = 0, 0
    for rep in range(25):
        rs = prompt_results({"a": 0.15, "b": 0.0}, seeds=(0, 1, 2, 3, 4), n=60, rng_seed=rep)
        c = compare(prompt_records(rs)["T"], "a", "b", "reward")
        covered += c["lo"] <= 0.15 <= c["hi"]
        significant += c["significant"]
        assert c["lo"] < c["diff"] < c["hi"]
        # conservative, but not wildly: the bootstrap SE stays within 2x the two-way ANOVA one
        assert c["se_model"] < c["se"] < 2 * c["se_model"]
    # the 95% interval covers the true 0.15 in (nearly) every data set, and a gain of 0.15 with 5 x 60
    # paired draws of sd 0.42 (SE ~0.03) is detected nearly always
    assert covered >= 23 and significant >= 23


def test_bootstrap_is_deterministic_and_wider_with_fewer_prompts():
    rs = prompt_results({"a": 0.1, "b": 0.0}, n=200)
    first = compare(prompt_records(rs)["T"], "a", "b", "reward")
    assert compare(prompt_records(rs)["T"], "a", "b", "reward") == first
    few = prompt_results({"a": 0.1, "b": 0.0}, n=20)
    c = compare(prompt_records(few)["T"], "a", "b", "reward")
    narrow, wide = first["hi"] - first["lo"], c["hi"] - c["lo"]
    assert wide > 2 * narrow  # 10x fewer prompts: ~3x wider


def test_probability_of_improvement_by_hand():
    # pairs: 1>0, 1<2, 1<5, 2>0, 2=2 (1/2), 2<5, 3>0, 3>2, 3<5 -> 4.5 / 9
    assert probability_of_improvement([1, 2, 3], [0, 2, 5]) == pytest.approx(0.5)
    assert probability_of_improvement([2.0, 3.0], [1.0]) == 1.0
    assert probability_of_improvement([0.4], [0.4, 0.5]) == pytest.approx(0.25)  # tie 1/2, loss 0
    assert math.isnan(probability_of_improvement([], [1.0]))


def test_paired_matrix_pairs_by_prompt_subset_and_reference():
    a = {0: rows([1.0, 2.0, None], subsets=["+", "-", "+"]), 1: rows([3.0, 1.0, 0.0], subsets=["+", "-", "+"])}
    b = {0: rows([0.5, 0.5, 0.5], subsets=["+", "-", "+"]), 1: rows([1.0, 1.0, 1.0], subsets=["+", "-", "+"]),
         2: rows([9.0, 9.0, 9.0])}
    d = paired_matrix(a, b, "reward")
    assert d.tolist() == [[0.5, 1.5], [2.0, 0.0]]  # seed 2 unpaired; prompt 2 lacks a value in seed 0
    assert paired_matrix(a, b, "+/reward").tolist() == [[0.5], [2.0]]
    assert paired_matrix(a, b, "nag").size == 0
    with pytest.raises(ValueError, match=r"seed 0, eval record 1: prompts differ"):
        paired_matrix({0: rows([1.0, 2.0], ["x", "y"])}, {0: rows([1.0, 2.0], ["x", "z"])}, "reward")
    with pytest.raises(ValueError, match="seed 0: 2 eval records vs 1"):
        paired_matrix({0: rows([1.0, 2.0])}, {0: rows([1.0])}, "reward")


def test_paired_table_orders_targets_first_and_compares_with_base():
    rs = prompt_results({"sft": 0.0, "grao": 0.3}, n=40)
    table = paired_table(rs, metrics=("reward", "nag"), first=["grao"])
    assert list(table["T"]) == ["reward"]  # no record has nag
    pairs = [(c["a"], c["b"]) for c in table["T"]["reward"]]
    assert pairs == [("grao", BASE), ("sft", BASE), ("grao", "sft")]
    grao = table["T"]["reward"][0]
    assert grao["significant"] and grao["lo"] > 0 and grao["p_improve"] == 1.0
    assert grao["diff"] == pytest.approx(np.mean([r["metrics"]["reward"] - r["base_metrics"]["reward"]
                                                  for r in rs if r["algorithm"] == "grao"]))
    assert prompt_records([{"task": "T", "algorithm": "x", "seed": 0, "metrics": {}}]) == {}  # schema 1
    for r in rs:  # nothing ever beats the reference (RAS on Arithmetic): no table of zeros
        for e in [*r["examples"], *r["base_examples"]]:
            e["ras"] = 0.0
    assert list(paired_table(rs, metrics=("reward", "ras"))["T"]) == ["reward"]


# ------------------------------------------------------------------------------------------ sample efficiency
def curve_rec(algo, seed, points, base=0.0, tokens_per_step=10):
    history = [{"step": s, "tokens/generated": tokens_per_step} for s in range(1, 31)]
    for step, value in points.items():
        history[step - 1]["eval/reward"] = value
    return rec("T", algo, seed, {}, history=history, base_metrics={"reward": base})


def test_auc_and_steps_to_threshold_by_hand():
    r = curve_rec("a", 0, {10: 0.2, 20: 0.6, 30: 0.8})
    steps, values, tokens = run_curve(r)
    assert steps.tolist() == [0, 10, 20, 30] and values.tolist() == [0.0, 0.2, 0.6, 0.8]  # base at step 0
    assert tokens.tolist() == [0, 100, 200, 300]
    # trapezoids: 10*(0+0.2)/2 + 10*(0.2+0.6)/2 + 10*(0.6+0.8)/2 = 1 + 4 + 7 = 12, over 30 steps = 0.4
    assert curve_auc(steps, values) == pytest.approx(0.4)
    assert first_reach(steps, values, 0.6) == 2 and first_reach(steps, values, 0.81) is None
    assert curve_auc(np.array([5.0]), np.array([0.3])) == 0.3
    # from the base: base + 90% of the best gain; 0.7 + 0.9 * (0.8 - 0.7) = 0.79, not 0.9 * 0.8 = 0.72,
    # which a base of 0.7 would "reach" at step 0
    assert threshold_of([0.8, 0.3], base=0.7) == pytest.approx(0.79)
    assert threshold_of([-0.5, -1.0], base=-0.9) == pytest.approx(-0.54)  # -0.9 + 0.9 * 0.4
    assert math.isnan(threshold_of([0.6, 0.65], base=0.7))  # nobody beat the base: nothing to reach
    assert threshold_of([0.8, 0.3]) == pytest.approx(0.72)  # no base: 90% of the best
    assert threshold_of([-0.5, -1.0]) == pytest.approx(-0.55)  # best - 10% of |best|, below the best


def test_sample_efficiency_not_reached_is_a_result():
    rs = [curve_rec("a", 0, {10: 0.2, 20: 0.6, 30: 0.8}), curve_rec("a", 1, {10: 0.3, 20: 0.75, 30: 0.8}),
          curve_rec("b", 0, {10: 0.1, 20: 0.2, 30: 0.3}), rec("T", "c", 0, {}, history=[{"step": 1}])]
    e = sample_efficiency(rs)["T"]
    assert e["best_final"] == pytest.approx(0.8) and e["threshold"] == pytest.approx(0.72)
    a, b = e["algorithms"]["a"], e["algorithms"]["b"]
    assert "c" not in e["algorithms"]  # no eval curve at all
    assert [p["steps"] for p in a["per_seed"]] == [30.0, 20.0] and a["reached"] == 2
    assert a["steps"]["mean"] == 25 and a["steps"]["ci95"] == pytest.approx(12.706 * 5, abs=0.01)  # sd 7.07
    assert a["tokens"]["mean"] == 250
    # seed 1: (0+0.3)*5 + (0.3+0.75)*5 + (0.75+0.8)*5 = 1.5 + 5.25 + 7.75 = 14.5 -> 0.48333
    assert a["auc"]["values"] == pytest.approx([0.4, 14.5 / 30])
    assert b["reached"] == 0 and b["per_seed"][0]["steps"] is None and math.isnan(b["steps"]["mean"])


def test_sample_efficiency_without_a_gain_reaches_nothing():
    rs = [curve_rec("a", 0, {10: 0.5, 20: 0.6, 30: 0.6}, base=0.7), curve_rec("b", 0, {10: 0.7, 30: 0.65}, base=0.7)]
    e = sample_efficiency(rs)["T"]
    assert e["base"] == pytest.approx(0.7) and math.isnan(e["threshold"])
    assert all(a["reached"] == 0 for a in e["algorithms"].values())
