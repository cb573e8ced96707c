"""Benchmarks on multi-turn tasks: episode evaluation, the runner's cells and files, config refusals, the report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import algos
import textenv
from algos.multiturn import episode_seed
from algos.multiturn_eval import evaluate_episodes
from algos.policy import Policy
from algos.tiny_chat import build_tiny_chat_model
from benchmarks import config as bench_config
from benchmarks import report as bench_report
from benchmarks import runner
from benchmarks.stats import BASE

GUESS, KV = "textenv/GuessNumber-v0", "textenv/KeyValue-v0"
EPISODE_KEYS = {"reward", "success_rate", "turns", "invalid_rate", "tool_calls"}


@pytest.fixture(scope="module")
def chat_dir():
    return build_tiny_chat_model()


@pytest.fixture
def single_turn_only():
    """An algorithm that does not declare multi-turn support (GRPO's code, ``multiturn = False``), whatever
    the registered ones come to declare."""

    @algos.register("single_turn_only")
    class SingleTurnOnly(algos.GRPO):
        multiturn = False

    yield "single_turn_only"
    algos.unregister("single_turn_only")


def mean(values):
    return float(np.mean(values))


# ------------------------------------------------------------------------------------ evaluation
class KeyValuePlayer(Policy):
    """The tiny chat model, but ``generate`` plays KeyValue from the conversation's text: it follows the
    keys the tool returns and submits the number, except that on a start key before "M" it first asks
    for a key that is not in the store (a tool error, an invalid action). With few turns, the long chains
    then run out of turns: episodes differ in success, turns, invalid actions and tool errors."""

    def generate(self, prompts, *, max_new_tokens=32, **_):
        ids, mask = self.encode_prompts(prompts, room=max_new_tokens)
        rows = [self.tokenizer(move(self.tokenizer.decode(p)), add_special_tokens=False)["input_ids"]
                + [self.tokenizer.eos_token_id] for p in prompts]
        comp, _ = self._pad(rows, left=False)
        return self._samples(list(prompts), 1, [(ids, mask, comp)])


def move(conversation: str) -> str:
    """KeyValuePlayer's next message for a conversation (see the class)."""
    start = re.search(r"Start at the key: (\w+)", conversation).group(1)
    results = re.findall(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", conversation, flags=re.S)
    if not results and start < "M":
        return textenv.format_tool_call("get", {"key": "nosuchkey"})
    last = next((r for r in reversed(results) if not r.startswith("Error")), start)
    if last.isdigit():
        return textenv.format_tool_call("submit", {"value": int(last)})
    return textenv.format_tool_call("get", {"key": last})


def replay(env, index: int, seed: int, tokenizer) -> dict:
    """Row ``index`` of the eval split played by ``move`` straight through ``env`` (no algos code): the
    episode facts evaluate_episodes must report."""
    _, info = env.reset(seed=episode_seed(seed, index), options={"split": "eval", "index": index})
    total, terminated, truncated, invalid = 0.0, False, False, 0
    while not (terminated or truncated):
        text = tokenizer.apply_chat_template(info["messages"], tokenize=False, add_generation_prompt=True)
        _, reward, terminated, truncated, info = env.step(move(text))
        total, invalid = total + reward, invalid + info["invalid_action"]
    stats = info["episode_stats"]
    return {"reward": total, "success": terminated and total > 0, "turns": stats["turns"], "invalid": invalid,
            "calls": stats["tool_calls"], "errors": stats["tool_errors"]}


def test_evaluate_episodes_reports_each_episode_as_the_env_played_it(chat_dir, single_turn_only):
    base = Policy.from_pretrained(chat_dir)
    player = KeyValuePlayer(base.model, base.tokenizer)
    env = textenv.make(KV, max_turns=4, n_train=1)  # one train row: quick to build; the eval rows are the same
    metrics, records = evaluate_episodes(player, env, num_prompts=8, seed=5, max_new_tokens=4)
    assert [r["index"] for r in records] == list(range(8))
    for r in records:
        played = replay(textenv.make(KV, task=env.task, max_turns=4), r["index"], 5, base.tokenizer)
        assert r["reward"] == played["reward"] and r["success_rate"] == float(played["success"])
        assert (r["turns"], r["invalid_actions"], r["tool_calls"], r["tool_errors"]) == (
            played["turns"], played["invalid"], played["calls"], played["errors"])
        assert r["invalid_rate"] == pytest.approx(played["invalid"] / played["turns"])
        assert r["tool_success"] == pytest.approx((played["calls"] - played["errors"]) / played["calls"])
        assert r["prompt"].startswith("user: A store maps keys") and "<tool_call>" in r["completion"]
    # the episodes differ, so the means below are not one value repeated
    assert 0 < metrics["success_rate"] < 1 and len({r["tool_success"] for r in records}) > 1
    for key in ("reward", "success_rate", "turns", "invalid_rate", "tool_calls", "tool_success"):
        assert metrics[key] == pytest.approx(mean([r[key] for r in records])), key
    assert metrics["n"] == 8 and "nag" not in metrics

    # NAG against base records of the same rows: the sign of each episode's return gain
    worse = [{**r, "reward": r["reward"] - 0.5 * (i % 2)} for i, r in enumerate(records)]
    with_base, again = evaluate_episodes(player, env, num_prompts=8, seed=5, max_new_tokens=4, base_records=worse)
    assert [r["nag"] for r in again] == [float(i % 2) for i in range(8)] and with_base["nag"] == 0.5
    with pytest.raises(ValueError, match="3 base records for 8 eval episodes"):
        evaluate_episodes(player, env, num_prompts=8, seed=5, base_records=records[:3])
    with pytest.raises(ValueError, match="base record 0 is not the base model's episode on eval row 0"):
        evaluate_episodes(player, env, num_prompts=8, seed=5, base_records=[{**records[0], "prompt": "x"}] * 8)

    # An agent evaluates a multi-turn env with the same function and shows the first episodes as a table;
    # an algorithm without multi-turn support still evaluates, but does not train on one.
    agent = algos.make(single_turn_only, player, batch_size=2, group_size=2, max_new_tokens=4)
    shown_metrics, table = agent._evaluate(env, num_prompts=3, seed=5)
    assert shown_metrics == evaluate_episodes(player, env, num_prompts=3, seed=5, max_new_tokens=4)[0]
    lines = table.splitlines()
    assert lines[0] == "| row | first messages | conversation | return | success | turns |" and len(lines) == 5
    assert lines[2].startswith("| 0 | user: A store maps keys")
    with pytest.raises(ValueError, match="base_completions do not apply to a multi-turn env"):
        agent.evaluate(env, num_prompts=3, base_completions=["a"] * 3)
    with pytest.raises(TypeError, match=r"single_turn_only does not train on multi-turn envs yet "
                                        r"\(textenv/KeyValue-v0.*SingleTurnOnly.multiturn is False"):
        agent.learn(env, 1, progress=False)
    import gymnasium

    grpo = algos.make("grpo", player, batch_size=2, group_size=2, max_new_tokens=4)
    with pytest.raises(TypeError, match="without wrappers"):
        grpo.learn(gymnasium.wrappers.TransformReward(env, lambda r: 2 * r), 1, progress=False)


# ------------------------------------------------------------------------------------ config
def grpo_config(chat_dir, algorithms: str = "[algorithms.grpo]\nlr = 1e-3\n", task: str = GUESS) -> str:
    return f"""title = "multi-turn test"
seeds = [0, 1]
[base]
model = "{chat_dir}"
[budget]
steps = 2
prompts_per_step = 2
group_size = 2
max_new_tokens = 6
[eval]
prompts = 4
every = 2
[tasks."{task}"]
kwargs = {{ max_turns = 2 }}
{algorithms}"""


@pytest.mark.parametrize(("algorithms", "message"), [
    ("[algorithms.mine]\nalgorithm = \"single_turn_only\"",
     r"\[algorithms.mine\]: algorithm 'single_turn_only' does not train on multi-turn envs yet "
     r"\(SingleTurnOnly.multiturn is False\), and \[tasks.\"textenv/GuessNumber-v0\"\] is a multi-turn task"),
    ("[algorithms.grpo]\n[algorithms.warm]\nalgorithm = \"grpo\"\nsft_steps = 2",
     r"\[algorithms.warm\]: algorithm 'sft' \(its sft_steps = 2 warm start\) does not train on multi-turn envs"),
])
def test_config_refuses_entries_that_cannot_train_on_a_multiturn_task(tmp_path, chat_dir, single_turn_only,
                                                                      monkeypatch, algorithms, message):
    monkeypatch.setattr(algos.get_algorithm("sft"), "multiturn", False)  # whatever SFT comes to declare
    path = tmp_path / "mt.toml"
    path.write_text(grpo_config(chat_dir, algorithms))
    with pytest.raises(bench_config.BenchConfigError, match=message) as err:
        bench_config.load(path)
    assert str(err.value).startswith(str(path))
    # the same entries on a single-turn task, and GRPO alone on the multi-turn one, are accepted
    single = path.with_name("single.toml")
    single.write_text(grpo_config(chat_dir, algorithms, task="textenv/Arithmetic-v0").replace(
        "kwargs = { max_turns = 2 }", ""))
    assert bench_config.load(single).tasks[0].id == "textenv/Arithmetic-v0"
    path.write_text(grpo_config(chat_dir))
    cfg = bench_config.load(path)
    assert cfg.tasks[0].id == GUESS and cfg.tasks[0].kwargs == {"max_turns": 2}


def test_shipped_multiturn_config_loads_with_all_five_algorithms_on_guess_number():
    cfg = bench_config.load("multiturn")
    assert [t.id for t in cfg.tasks] == [GUESS]
    assert {a.algorithm for a in cfg.algorithms} == {"sft", "dpo", "ppo", "grpo", "grao"}
    assert all(algos.get_algorithm(a.algorithm).multiturn for a in cfg.algorithms)


# ------------------------------------------------------------------------------------ runner and report
def test_a_multiturn_benchmark_runs_and_reports_episode_metrics(tmp_path, chat_dir):
    path = tmp_path / "mt.toml"
    path.write_text(grpo_config(chat_dir))
    out = tmp_path / "out"
    results = runner.run(bench_config.load(path), out, progress=False, log=lambda s: None)
    assert [(r["task"], r["algorithm"], r["seed"]) for r in results] == [(GUESS, "grpo", 0), (GUESS, "grpo", 1)]
    for r in results:
        assert r["multiturn"] is True and r["config"]["max_turns"] == 2 and r["optimizer_steps"] == 2
        assert runner.file_problem(runner.ResultFile, r) is None
        saved = out / "results" / "textenv__GuessNumber-v0" / "grpo" / f"seed{r['seed']}.json"
        assert json.loads(saved.read_text()) == r
        for field, records in (("metrics", r["examples"]), ("base_metrics", r["base_examples"])):
            metrics = r[field]
            assert set(metrics) >= EPISODE_KEYS and metrics["n"] == len(records) == 4
            assert [e["index"] for e in records] == [0, 1, 2, 3]
            for e in records:  # each record's values from its own counts
                assert 1 <= e["turns"] <= 2 and e["success_rate"] == float(e["terminated"] and e["reward"] > 0)
                assert e["invalid_rate"] == e["invalid_actions"] / e["turns"]
                assert e["completion"].startswith("assistant:")
            for key in EPISODE_KEYS:
                assert metrics[key] == pytest.approx(mean([e[key] for e in records])), (field, key)
            assert ("tool_success" in metrics) == any(e["tool_calls"] for e in records)
        assert [e["prompt"] for e in r["examples"]] == [e["prompt"] for e in r["base_examples"]]
        assert [e["nag"] for e in r["examples"]] == [
            float(np.sign(e["reward"] - b["reward"])) for e, b in zip(r["examples"], r["base_examples"], strict=True)]
        # learn()'s last eval (Agent._evaluate) played the very episodes the result records
        last = r["history"][-1]
        assert {k: last[f"eval/{k}"] for k in r["metrics"] if k != "nag"} == {
            k: v for k, v in r["metrics"].items() if k != "nag"}
        assert "episodes/success_rate" in last and r["tokens_generated"] > 0
        base_file = json.loads((out / "base_eval" / "textenv__GuessNumber-v0" / f"seed{r['seed']}.json").read_text())
        assert base_file["multiturn"] is True and base_file["examples"] == r["base_examples"]
        assert base_file["completions"] == [e["completion"] for e in r["base_examples"]]
    # the same settings run nothing again
    assert runner.run(bench_config.load(path), out, progress=False, log=lambda s: None) == results

    report = bench_report.write_report(results, out, title="mt")
    md = (out / "report.md").read_text()
    assert bench_report.MULTITURN_NOTE in md and "| max turns per episode | 2 |" in md
    assert "written before result schema 2" not in md  # the records are there, whether or not anything differs
    header = "| algorithm | seeds | reward | success_rate | turns | invalid_rate | tool_calls | nag |"
    assert header in md
    turns = [r["metrics"]["turns"] for r in results]
    assert report["summary"][GUESS]["grpo"]["turns"]["values"] == turns
    # the paired table from the base model: the mean difference of each episode's value, over seeds and rows
    paired = next(line for line in md.splitlines() if line.startswith("| grpo | ") and "[" in line)
    cells = [c.strip() for c in paired.strip("|").split("|")]
    for column, key in enumerate(["reward", "success_rate", "turns", "invalid_rate"], start=1):
        diff = mean([e[key] - b[key] for r in results for e, b in zip(r["examples"], r["base_examples"], strict=True)])
        assert cells[column].startswith(f"{diff:+.3f} ["), (key, cells)
    assert "**Eval episode" in md and "| entry | conversation | return | success | turns |" in md
    assert {"curves_textenv_GuessNumber-v0.png", "final_textenv_GuessNumber-v0.png"} <= {
        p.rsplit("/", 1)[-1] for p in report["plots"]}


def episode(i: int, reward: float, turns: int, invalid: int, calls: int = 0, errors: int = 0) -> dict:
    return {"index": i, "prompt": f"user: row {i}", "completion": "assistant: 5\nuser: Higher.", "reward": reward,
            "success_rate": float(reward > 0), "turns": float(turns), "invalid_rate": invalid / turns,
            "tool_calls": float(calls), "tool_success": (calls - errors) / calls if calls else None,
            "invalid_actions": invalid, "tool_errors": errors, "terminated": reward > 0, "context_full": False}


def multiturn_result(algorithm: str, seed: int, examples: list[dict], base_examples: list[dict]) -> dict:
    from algos.multiturn_eval import episode_metrics

    examples = [{**e, "nag": float(np.sign(e["reward"] - b["reward"]))}
                for e, b in zip(examples, base_examples, strict=True)]
    metrics = episode_metrics(examples)
    return {"schema": runner.SCHEMA, "key": "k", "task": KV, "algorithm": algorithm, "algo": "grpo", "seed": seed,
            "metrics": metrics, "base_metrics": episode_metrics(base_examples), "examples": examples,
            "base_examples": base_examples, "multiturn": True,
            "history": [{"step": 10, "eval/reward": metrics["reward"], "tokens/generated": 100.0}],
            "tokens_generated": 100.0, "tokens_trained": 100.0, "optimizer_steps": 10, "wall_time_s": 1.0,
            "config": {"max_turns": 3}}


def synthetic_results() -> list[dict]:
    """Three seeds × 8 eval rows: the base model never succeeds (3 turns, 2 invalid, a tool error in two
    calls), grpo solves 7 of 8 rows in 2 clean turns, "other" only the first row."""
    base = [episode(i, 0.0, 3, 2, calls=2, errors=1) for i in range(8)]
    good = [episode(i, 1.0 if i else 0.0, 2 if i else 3, 0, calls=2) for i in range(8)]
    other = [episode(i, 1.0 if i == 0 else 0.0, 3, 1, calls=2, errors=1) for i in range(8)]
    return [multiturn_result(a, s, rows, base) for s in range(3) for a, rows in (("grpo", good), ("other", other))]


def test_report_gives_episode_metrics_the_paired_statistics_of_the_main_metric(tmp_path):
    results = synthetic_results()
    assert all(runner.file_problem(runner.ResultFile, r) is None for r in results)
    report = bench_report.write_report(results, tmp_path, title="mt", plots=False)
    md = (tmp_path / "report.md").read_text()
    lines = md.splitlines()
    assert ("| algorithm | seeds | reward | success_rate | turns | invalid_rate | tool_calls | tool_success | nag |"
            in lines)
    # success_rate equals reward here and is shown anyway; mean ± CI over seeds like the reward
    assert "| grpo | 3 | 0.875 ± 0.000 | 0.875 ± 0.000 | 2.125 ± 0.000 | 0.000 ± 0.000 | 2.000 ± 0.000 |" in md
    start = lines.index(f"#### {KV}: episode metrics, paired with the base model")
    table = lines[start + 4:start + 8]
    assert table[0] == "| algorithm | reward | success_rate | turns | invalid_rate | tool_calls | tool_success |"
    grpo = [c.strip() for c in table[2].strip("|").split("|")]
    assert [c.split(" [")[0] for c in grpo] == ["grpo", "+0.875", "+0.875", "-0.875", "-0.667", "+0.000", "+0.500"]
    assert [c.endswith("✓") for c in grpo[1:]] == [True, True, True, True, False, True], grpo
    other = [c.strip() for c in table[3].strip("|").split("|")]
    assert other[3] == "+0.000 [+0.000, +0.000]" and other[4].startswith("-0.333")  # no ✓ without a difference
    paired = report["paired"][KV]
    assert {"reward", "success_rate", "turns", "invalid_rate", "tool_success", "nag"} <= set(paired)
    ts = next(c for c in paired["tool_success"] if (c["a"], c["b"]) == ("grpo", BASE))
    assert ts["diff"] == pytest.approx(0.5) and ts["significant"] and ts["prompts"] == 8 and ts["seeds"] == 3
    findings = next(line for line in lines if line.startswith(f"- **{KV}, success_rate**"))
    assert "grpo > base model (+0.875" in findings
    assert "**Eval episode" in md
    assert "| other | assistant: 5 ⏎ user: Higher. | 1.000 | 1 | 3 | 1 | 2 (1 errors) |" in md


# ------------------------------------------------------------------------------------ malformed files
def test_a_malformed_multiturn_result_is_refused_naming_the_file_and_field(tmp_path, capsys):
    good = synthetic_results()[0]
    bad = {
        "no_success": ({**good, "metrics": {k: v for k, v in good["metrics"].items() if k != "success_rate"}},
                       "key 'metrics': a multi-turn result needs the metric 'success_rate'"),
        "turns_text": ({**good, "examples": [good["examples"][0], {**good["examples"][1], "turns": "two"}]},
                       "key 'examples': episode record 1: key 'turns' must be float, got str 'two'"),
        "no_records": ({**good, "base_examples": None},
                       "key 'base_examples': a multi-turn result needs its per-episode"),
        "rate": ({**good, "examples": [{**good["examples"][0], "invalid_rate": 1.5}, *good["examples"][1:]]},
                 "key 'examples': episode record 0: key 'invalid_rate' must be in [0, 1], got 1.5"),
        "count": ({**good, "examples": good["examples"][:5]}, "key 'examples': 5 episode records for n = 8.0"),
        "no_prompt": ({**good, "examples": [{k: v for k, v in e.items() if k != "prompt"} for e in good["examples"]]},
                      "key 'examples': episode record 0: missing key 'prompt'"),
    }
    for name, (result, _) in bad.items():
        path = tmp_path / "results" / "textenv__KeyValue-v0" / name / "seed0.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(result))
    (tmp_path / "results" / "textenv__KeyValue-v0" / "ok" / "seed0.json").parent.mkdir()
    (tmp_path / "results" / "textenv__KeyValue-v0" / "ok" / "seed0.json").write_text(json.dumps(good))
    assert runner.load_results(tmp_path) == [good]
    printed = capsys.readouterr().out
    for name, (_, message) in bad.items():
        line = next(x for x in printed.splitlines() if f"/{name}/seed0.json" in x)
        assert "not a complete result" in line and message in line, (name, line)
    # a cell's file is set aside (and the cell redone), saying why
    path = tmp_path / "results" / "textenv__KeyValue-v0" / "turns_text" / "seed0.json"
    assert runner.read_result(path, "k") is None and not path.exists()
    assert "key 'turns' must be float" in capsys.readouterr().out
    # a cached base eval of episodes is checked the same way
    cached = tmp_path / "base.json"
    cached.write_text(json.dumps({"key": "b", "completions": ["x"] * 8, "metrics": good["base_metrics"],
                                  "examples": [{**e, "success_rate": None} for e in good["base_examples"]],
                                  "multiturn": True}))
    assert runner.read_base_eval(cached, "b", 8) is None and not cached.exists()
    assert "key 'examples': episode record 0: key 'success_rate' must be float" in capsys.readouterr().out


def test_the_real_model_script_runs_end_to_end_on_the_tiny_chat_model(chat_dir, capsys):
    """benchmarks.real_multiturn (SmolLM2 by hand) on the tiny chat model: SFT, both evals, the table."""
    from benchmarks.real_multiturn import main

    main(["--model", str(chat_dir), "--steps", "1", "--rows", "2", "--tasks", GUESS])
    out = capsys.readouterr().out
    assert "| textenv/GuessNumber-v0 | before |" in out and "| textenv/GuessNumber-v0 | after |" in out
    assert "an episode after SFT" in out and "SFT on oracle trajectories (1 steps x 4" in out
