"""The bad-input and fault catalogue: every row is one bad input or fault, the error type it must raise
and a fragment of the message (which names the file, key, reward, env or index at fault).

Tables first (config refusals, loaders/rewards/envs/paths), then the runner's faults that need a run
directory, then property-based tests: any config or reward output either parses to valid values or
raises the project's own error naming the key -- never another exception type.
"""

import dataclasses
import gzip
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bench_toml, random_policy
from hypothesis import given, settings
from hypothesis import strategies as st

import rewards
import textenv
from benchmarks import config as bench_config
from benchmarks import runner
from benchmarks.__main__ import main as cli
from textenv import TaskError
from textenv.data import load_hh, load_jsonl, read_jsonl

TASK = '[tasks."textenv/Arithmetic-v0"]\n'
SFT = "[algorithms.sft]\n"

# ----------------------------------------------------------------------------- config refusals
# (TOML text, message fragment); every error must also name the file.
CONFIG_ROWS = [
    ('[base]\ndtype = "float33"', r"\[base\] dtype 'float33' is not a torch dtype name"),
    ("[base]\ndtype = 16", r"\[base\] dtype must be a string, got int"),
    ('[base]\ndevice = "gpu7"', r"\[base\] device 'gpu7' is not a torch device"),
    ("[base]\ndevice = 0", r"\[base\] device must be a string"),
    ("[base.recipe]\nhiden = 32", r"unknown key 'hiden' in \[base.recipe\]; valid keys: .*hidden"),
    ('[base.recipe]\nhidden = "big"', r"\[base.recipe\] hidden must be an integer, got str"),
    ("[base.recipe]\nlayers = 0", r"\[base.recipe\] layers must be >= 1"),
    ('[base.recipe]\narch = "mamba"', r"\[base.recipe\] arch must be 'llama' or 'gpt2'"),
    ("[base.recipe]\ntrain_references = 1", r"\[base.recipe\] train_references must be true or false"),
    ("[eval]\ntemperature = 0", r"\[eval\] temperature must be > 0.0, got 0.0"),
    ("[eval]\ntemperature = -0.5", r"\[eval\] temperature must be > 0.0"),
    ("[eval]\ntemperature = nan", r"\[eval\] temperature must be a finite number, got nan"),
    ("[eval]\ntemperature = inf", r"\[eval\] temperature must be a finite number, got inf"),
    ("[eval]\ntop_p = 1.5", r"\[eval\] top_p must be <= 1.0, got 1.5"),
    ("[eval]\ntop_p = 0.0", r"\[eval\] top_p must be > 0.0"),
    ("[eval]\ntop_p = -inf", r"\[eval\] top_p must be a finite number"),
    ("[eval]\nseed = -1", r"\[eval\] seed must be >= 0, got -1"),
    ("[eval]\nseed = 4294967296", r"\[eval\] seed must be <= 2147483647"),
    ("[eval]\nprompts = 0", r"\[eval\] prompts must be >= 1"),
    ("seeds = [0, -3]", r"seeds must be a non-empty list of integers in \[0, 2147483647\]"),
    ("[budget]\nsteps = 0", r"\[budget\] steps must be >= 1"),
    ("[budget]\ngroup_size = true", r"\[budget\] group_size must be an integer, got bool"),
    ("[budget]\nmax_new_tokens = 1.5", r"\[budget\] max_new_tokens must be an integer, got float"),
    (TASK + "steps = -2", r'\[tasks."textenv/Arithmetic-v0"\] steps must be >= 1'),
    ("target = [1]\n" + TASK + SFT, r"target must be a string, got list"),
    (TASK + '[algorithms."../../../x"]\nalgorithm = "sft"',
     r"\[algorithms.../../../x\]: '../../../x' cannot name a folder under --out"),
    (TASK + '[algorithms."/abs/path"]\nalgorithm = "sft"', r"'/abs/path' cannot name a folder under --out"),
    (TASK + '[algorithms."a\\\\b"]\nalgorithm = "sft"', r"cannot name a folder under --out"),
    (TASK + '[algorithms.".."]\nalgorithm = "sft"', r"'\.\.' cannot name a folder"),
    (TASK + '[algorithms.""]\nalgorithm = "sft"', r"'' cannot name a folder"),
    ('[tasks."textenv/Preference-v0".kwargs]\ncache = 3\n' + SFT,
     r'\[tasks."textenv/Preference-v0"\] kwargs.cache must be a string, got int'),
]


@pytest.mark.parametrize(("text", "message"), CONFIG_ROWS)
def test_config_refusals_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(bench_config.BenchConfigError, match=message) as err:
        bench_config.load(path)
    assert "bad.toml" in str(err.value)


def test_cache_kwarg_naming_an_existing_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    raw = {"tasks": {"textenv/Preference-v0": {"kwargs": {"cache": str(tmp_path / "afile")}}},
           "algorithms": {"sft": {}}}
    with pytest.raises(bench_config.BenchConfigError, match=r"cfg.toml: .*kwargs.cache must name a folder"):
        bench_config.parse(raw, where="cfg.toml")


def test_valid_base_options_pass():
    raw = {"base": {"dtype": "bfloat16", "device": "cuda:1", "recipe": {"hidden": 32, "lr": 1e-3}},
           "eval": {"temperature": 1, "top_p": 1.0, "seed": 0}, "tasks": {"textenv/Arithmetic-v0": {}},
           "algorithms": {"sft_v2.1+lr-3": {"algorithm": "sft"}}}
    cfg = bench_config.parse(raw, where="ok.toml")
    assert cfg.base_options["recipe"] == {"hidden": 32, "lr": 1e-3}
    assert (cfg.eval.temperature, cfg.algorithms[0].name) == (1.0, "sft_v2.1+lr-3")


# ----------------------------------------------------------------------------- loaders, rewards, envs, paths
def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _reward(values):
    return rewards.resolve(lambda prompts, completions, references=None: values, name="bad_reward")


FAULT_ROWS = [
    pytest.param(lambda d: read_jsonl(_write(d / "latin1.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')),
                 TaskError, r"latin1.jsonl', line 2: not UTF-8 text", id="jsonl-not-utf8"),
    pytest.param(lambda d: read_jsonl(_write(d / "plain.jsonl.gz", b'{"prompt": "a"}\n')),
                 TaskError, r"plain.jsonl.gz': not a valid gzip file", id="gz-not-gzip"),
    pytest.param(lambda d: read_jsonl(_write(d / "cut.jsonl.gz", gzip.compress(b'{"prompt": "a"}\n' * 50)[:30])),
                 TaskError, r"cut.jsonl.gz': not a valid gzip file", id="gz-truncated"),
    pytest.param(lambda d: load_jsonl(_write(d / "ok.jsonl", b'{"prompt": "a"}\n'), limit=-1),
                 TaskError, r"ok.jsonl': limit must be None or an integer >= 0, got -1", id="jsonl-negative-limit"),
    pytest.param(lambda d: load_hh(_write(d / "hh.jsonl", b'{"chosen": "a", "rejected": "b"}\n'), limit=-5),
                 TaskError, r"limit must be None or an integer >= 0, got -5", id="hh-negative-limit"),
    pytest.param(lambda d: _reward([1e39])(["p"], ["c"], where="textenv/X-v0"), rewards.RewardError,
                 r"reward 'bad_reward' \(in textenv/X-v0\) returned a value too large for float32 \(1e\+39\) "
                 r"at index 0",
                 id="reward-overflows-float32"),
    pytest.param(lambda d: _reward([0.0, -3.5e38])(["p", "q"], ["c", "d"], where="env"), rewards.RewardError,
                 r"'bad_reward' \(in env\) returned a value too large for float32 .* at index 1",
                 id="reward-neg-overflow"),
    pytest.param(lambda d: _reward(["1.5"])(["p"], ["c"], where="env"), rewards.RewardError,
                 r"'bad_reward' \(in env\) returned non-numeric values \(list\): value '1.5' at index 0 is not a "
                 r"real number", id="reward-str"),
    pytest.param(lambda d: _reward(np.array(["1"]))(["p"], ["c"]), rewards.RewardError,
                 r"'bad_reward' returned non-numeric values \(ndarray\)", id="reward-numpy-str"),
    pytest.param(lambda d: _reward([1.0, "2"])(["p", "q"], ["c", "d"]), rewards.RewardError,
                 r"returned non-numeric values \(list\): value '2' at index 1", id="reward-mixed-str"),
    pytest.param(lambda d: _reward([10**400])(["p"], ["c"]), rewards.RewardError,
                 r"'bad_reward' returned non-numeric values", id="reward-huge-int"),
    pytest.param(lambda d: _reward([1 + 2j])(["p"], ["c"]), rewards.RewardError,
                 r"returned non-numeric values", id="reward-complex"),
    pytest.param(lambda d: textenv.make_vec("textenv/Arithmetic-v0", num_prompts=2, group_size=0), ValueError,
                 r"make_vec\('textenv/Arithmetic-v0'\): group_size must be an integer >= 1, got 0", id="vec-group-0"),
    pytest.param(lambda d: textenv.make_vec("textenv/Arithmetic-v0", num_prompts=0), ValueError,
                 r"num_prompts must be an integer >= 1, got 0", id="vec-prompts-0"),
    pytest.param(lambda d: runner.out_path(d, "results", "..", "x.json"), bench_config.BenchConfigError,
                 r"'\.\.' would leave the output folder", id="path-dotdot"),
    pytest.param(lambda d: runner.out_path(d, "tensorboard", "/abs/path"), bench_config.BenchConfigError,
                 r"'/abs/path' would leave the output folder", id="path-absolute"),
    pytest.param(lambda d: runner.out_path(d, "results", "a/../../b"), bench_config.BenchConfigError,
                 r"would leave the output folder", id="path-nested"),
]


@pytest.mark.parametrize(("trigger", "error", "message"), FAULT_ROWS)
def test_fault_catalogue(tmp_path, trigger, error, message):
    with pytest.raises(error, match=message):
        trigger(tmp_path)


def test_reward_tensor_that_requires_grad_is_detached():
    """Chosen behaviour: a reward is a signal, never part of the graph, so a grad tensor is detached."""
    weight = torch.tensor(2.0, requires_grad=True)
    values = _reward(weight * torch.tensor([1.0, -0.5]))(["p", "q"], ["c", "d"])
    assert isinstance(values, np.ndarray) and values.dtype == np.float64
    assert values.tolist() == [2.0, -1.0]


# ----------------------------------------------------------------------------- runner faults
def _config(base_path, kwargs: str = "", prompts: int = 4, algorithms: str = SFT) -> bench_config.BenchConfig:
    import tomllib

    text = bench_toml(base_path, max_new_tokens=3, prompts=prompts, every=0, task=kwargs, body=algorithms)
    return bench_config.parse(tomllib.loads(text), where="test.toml")


@pytest.fixture
def base_path(tmp_path):
    path = tmp_path / "base"
    random_policy().save(path)
    return path


def _base_eval(cfg, base_path, out):
    task = cfg.tasks[0]
    env = textenv.make(task.id, **task.kwargs)
    return runner.evaluate_base(cfg, env, runner.load_policy(cfg, str(base_path)), task.budget, 0, out)


def test_base_eval_is_redone_when_task_kwargs_checkpoint_or_prompts_change(tmp_path, base_path):
    out = tmp_path / "out"
    small = _base_eval(_config(base_path, "kwargs = {max_operand = 9, n_eval = 20}"), base_path, out)
    assert small == _base_eval(_config(base_path, "kwargs = {max_operand = 9, n_eval = 20}"), base_path, out)
    large = _base_eval(_config(base_path, "kwargs = {max_operand = 99, n_eval = 20}"), base_path, out)
    assert large["key"] != small["key"]
    saved = json.loads((out / "base_eval" / "textenv__Arithmetic-v0" / "seed0.json").read_text())
    assert saved["key"] == large["key"]
    fewer = _base_eval(_config(base_path, "kwargs = {max_operand = 99, n_eval = 20}", prompts=2), base_path, out)
    assert len(fewer["completions"]) == 2 and fewer["key"] != large["key"]
    random_policy(seed=1).save(base_path)  # same path, new weights
    os.utime(base_path / "model.safetensors", ns=(1, 1))
    retrained = _base_eval(_config(base_path, "kwargs = {max_operand = 99, n_eval = 20}", prompts=2), base_path, out)
    assert retrained["key"] != fewer["key"]


@pytest.mark.parametrize("content", [os.urandom(64) + b"\xff", b"[1, 2, 3]", b'{"key": "x", "completions": [1]}'],
                         ids=["random-bytes", "json-list", "wrong-fields"])
def test_corrupt_base_eval_is_set_aside_and_recomputed(tmp_path, base_path, content, capsys):
    out = tmp_path / "out"
    folder = out / "base_eval" / "textenv__Arithmetic-v0"
    folder.mkdir(parents=True)
    (folder / "seed0.json").write_bytes(content)
    record = _base_eval(_config(base_path), base_path, out)
    assert len(record["completions"]) == 4
    assert json.loads((folder / "seed0.json").read_text()) == record
    assert [p.read_bytes() for p in folder.glob("seed0.corrupt-*")] == [content]
    assert "moved to seed0.corrupt-" in capsys.readouterr().out


def test_unwritable_results_folder_fails_before_training(tmp_path, base_path, monkeypatch):
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "textenv__Arithmetic-v0").write_text("a file where the folder must go")

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained a cell whose result could not be written")

    monkeypatch.setattr(runner, "run_cell", must_not_train)
    with pytest.raises(runner.CellsFailed, match=r"results/textenv__Arithmetic-v0/sft: cannot write results "
                                                 r"here.*nothing was trained"):
        runner.run(_config(base_path), out, progress=False, log=lambda s: None)


def test_redone_cell_starts_fresh_logs(tmp_path, base_path):
    out = tmp_path / "out"
    logs = out / "tensorboard" / "textenv__Arithmetic-v0" / "sft" / "seed0"
    logs.mkdir(parents=True)
    (logs / "history.jsonl").write_text('{"step": 99, "stale": true}\n')
    (logs / "events.out.tfevents.0.killed").write_bytes(b"old")
    runner.run(_config(base_path), out, progress=False, log=lambda s: None)
    history = [json.loads(line) for line in (logs / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2]
    assert not (logs / "events.out.tfevents.0.killed").exists()
    fresh = tmp_path / "fresh"
    runner.run(_config(base_path), fresh, progress=False, log=lambda s: None)
    fresh_logs = fresh / "tensorboard" / "textenv__Arithmetic-v0" / "sft" / "seed0"
    assert len(list(logs.glob("events.out.tfevents.*"))) == len(list(fresh_logs.glob("events.out.tfevents.*")))


@pytest.mark.parametrize("name", ["../../../../escaped", "{tmp}/abs-escape"])
def test_runner_refuses_an_entry_name_that_leaves_out_even_past_the_config_check(tmp_path, base_path, name):
    """A config built in code skips parse(); the runner's single write helper still refuses the name."""
    name = name.format(tmp=tmp_path)
    cfg = _config(base_path)
    cfg = dataclasses.replace(cfg, algorithms=[dataclasses.replace(cfg.algorithms[0], name=name)])
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(bench_config.BenchConfigError, match="would leave the output folder"):
        runner.run(cfg, out, progress=False, log=lambda s: None)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and "base" not in p.parts}
    assert {p for p in written if p.parts[:3] != ("a", "b", "out")} == set()
    assert not list(tmp_path.rglob("*escape*"))


def test_a_failed_write_keeps_the_old_result_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "seed0.json"
    runner.write_json_atomic(path, {"metrics": 1})

    def disk_full(data, fh, **kwargs):
        fh.write('{"metrics": ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner.json, "dump", disk_full)
    with pytest.raises(OSError, match="No space left"):
        runner.write_json_atomic(path, {"metrics": 2})
    assert json.loads(path.read_text()) == {"metrics": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["seed0.json"]


def test_report_on_missing_directory_fails_without_creating_it(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert cli(["report", str(missing)]) == 2
    assert not missing.exists()
    assert "no-such-run: no such run directory" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["garbage{", '["a list"]', '{"path": "x.toml"}', '{"path": "x.toml", "config": 3}'])
def test_report_with_damaged_config_json_names_the_file(tmp_path, capsys, content):
    (tmp_path / "config.json").write_text(content)
    assert cli(["report", str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.json'}" in capsys.readouterr().err


def test_library_never_unpickles_evaluates_or_runs_remote_code_by_default():
    """No pickle, no eval/exec, torch.load only with weights_only=True, trust_remote_code off by default."""
    root = Path(__file__).resolve().parent.parent
    for path in [p for pkg in ("algos", "benchmarks", "rewards", "textenv") for p in (root / pkg).rglob("*.py")]:
        code = path.read_text()
        assert not re.search(r"^\s*(import|from) (pickle|dill|cloudpickle)\b|(?<![.\w])(eval|exec)\(", code, re.M), path
        assert all("weights_only=True" in call for call in re.findall(r"torch\.load\([^)]*\)", code)), path
        assert not re.search(r"trust_remote_code: bool = True|allow_pickle=True", code), path


# ----------------------------------------------------------------------------- property-based
VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.lists(st.integers(-5, 5), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
KEYS = [("budget", k) for k in ("steps", "prompts_per_step", "group_size", "max_new_tokens")] + \
       [("eval", k) for k in ("prompts", "temperature", "top_p", "seed", "every")] + \
       [("base", k) for k in ("model", "dtype", "device", "trust_remote_code", "recipe")] + \
       [("base.recipe", k) for k in ("hidden", "lr", "arch", "seed", "train_references", "nonsense")] + \
       [(None, k) for k in ("title", "seeds", "target", "paper_protocol")]


def _put(raw, section, key, value):
    node = raw
    for part in (section.split(".") if section else []):
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[key] = value


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4),
       st.text(min_size=0, max_size=12))
def test_any_config_parses_to_valid_values_or_names_the_key(entries, entry_name):
    raw = {"tasks": {"textenv/Arithmetic-v0": {}}, "algorithms": {entry_name: {"algorithm": "sft"}}}
    for (section, key), value in entries:
        _put(raw, section, key, value)
    try:
        cfg = bench_config.parse(raw, where="fuzz.toml")
    except bench_config.BenchConfigError as err:
        message = str(err)
        assert message.startswith("fuzz.toml")
        assert any(key in message or (section or "").split(".")[0] in message for (section, key), _ in entries) \
            or "cannot name a folder" in message
        return
    assert all(v >= 1 for k, v in vars(cfg.budget).items())
    assert math.isfinite(cfg.eval.temperature) and cfg.eval.temperature > 0 and 0 < cfg.eval.top_p <= 1
    assert cfg.eval.seed >= 0 and all(s >= 0 for s in cfg.seeds) and cfg.eval.every >= 0
    assert isinstance(cfg.title, str) and (cfg.target is None or isinstance(cfg.target, str))
    runner.out_path("/tmp/out", "results", runner.slug(cfg.tasks[0].id), cfg.algorithms[0].name, "seed0.json")


REWARD_OUTPUTS = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=4),
    st.lists(st.integers(min_value=-2**1100, max_value=2**1100), max_size=4),
    st.lists(st.one_of(st.floats(), st.text(max_size=3), st.none(), st.booleans(), st.complex_numbers()), max_size=4),
    st.lists(st.lists(st.floats(-1, 1), max_size=2), max_size=3),
    st.floats(), st.text(max_size=4), st.none(), st.dictionaries(st.text(max_size=2), st.floats(), max_size=2),
    st.builds(lambda xs: torch.tensor(xs, requires_grad=True), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=4)),
    st.builds(np.array, st.lists(st.floats(width=32), max_size=4)),
)


@settings(max_examples=100, deadline=None)
@given(REWARD_OUTPUTS, st.integers(1, 4))
def test_any_reward_output_is_valid_or_a_reward_error_naming_reward_and_env(values, n):
    reward = _reward(values)
    try:
        out = reward(["p"] * n, ["c"] * n, where="textenv/Fuzz-v0")
    except rewards.RewardError as err:
        assert "reward 'bad_reward' (in textenv/Fuzz-v0)" in str(err)
        return
    assert out.dtype == np.float64 and out.shape == (n,)
    assert np.all(np.isfinite(out.astype(np.float32)))
