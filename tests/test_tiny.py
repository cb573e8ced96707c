"""Tiny base models (algos.tiny) and the Arithmetic-v0 task they are tuned on."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import algos.tiny as tiny
from algos.tiny import TinyRecipe, cache_root, default_recipe, pretrain_tiny
from textenv import Task, TaskError
from textenv.tasks.arithmetic import arithmetic_task

SMALL = TinyRecipe(hidden=16, layers=1, heads=2, mlp_ratio=2, steps=20, warmup_steps=5, batch_size=8,
                   seq_len=16, max_positions=32)


@pytest.fixture(scope="module")
def task() -> Task:
    return arithmetic_task(seed=0, n_train=100, n_eval=50)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


# ----------------------------------------------------------------- pretraining and cache
def test_second_call_reuses_the_cache(task, tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="algos.tiny")
    first = pretrain_tiny(task, SMALL, cache_dir=tmp_path, progress=False)
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("pretrain_tiny trained again although the model was cached")

    monkeypatch.setattr(tiny, "train", no_training)
    assert pretrain_tiny(task, SMALL, cache_dir=tmp_path, progress=False) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert "reusing cached" in caplog.text
    # Anything in the key that changes -> another directory (and here: training, which is forbidden).
    with pytest.raises(AssertionError, match="trained again"):
        pretrain_tiny(task, dataclasses.replace(SMALL, seed=1), cache_dir=tmp_path, progress=False)


def test_saved_model_loads_with_auto_classes(task, tmp_path):
    path = pretrain_tiny(task, SMALL, cache_dir=tmp_path, progress=False)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert (path / "model.safetensors").exists()
    assert model.config.vocab_size == len(tok) == 259
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = tok("12+7=", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "12+7="
    logits = model(torch.tensor([[1, *ids]])).logits
    assert logits.shape == (1, len(ids) + 1, 259)
    # Only the finished directory is left behind: no temporary directories.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_pretraining_is_deterministic_for_a_seed(task, tmp_path):
    # Bitwise, and so only within one process environment: both runs are made here, in this test, on this
    # machine with this thread count and these library versions; never compared with recorded numbers.
    a = _weights(pretrain_tiny(task, SMALL, cache_dir=tmp_path / "a", progress=False))
    b = _weights(pretrain_tiny(task, SMALL, cache_dir=tmp_path / "b", progress=False))
    c = _weights(pretrain_tiny(task, dataclasses.replace(SMALL, seed=1), cache_dir=tmp_path / "c", progress=False))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_interrupted_save_leaves_no_model(task, tmp_path, monkeypatch):
    real_train = tiny.train

    def train_then_interrupt(*args, **kwargs):
        model, losses = real_train(*args, **kwargs)

        def interrupted(*a, **k):
            raise KeyboardInterrupt

        model.save_pretrained = interrupted
        return model, losses

    monkeypatch.setattr(tiny, "train", train_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrain_tiny(task, SMALL, cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "tiny").iterdir()) == []


def test_pretraining_lowers_the_loss(task):
    _, losses = tiny.train(tiny.documents(task, SMALL), dataclasses.replace(SMALL, steps=60), progress=False)
    # Observed: a drop of 2.34 nats at 1 and 2 threads; asserted: 1.0.
    drop = np.mean(losses[:5]) - np.mean(losses[-10:])
    print(f"pretraining loss drop over 60 steps: {drop:.3f} (asserted > 1.0)")
    assert drop > 1.0


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAO_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("GRAO_CACHE")
    assert cache_root().parts[-2:] == (".cache", "grao-lab")


def test_default_recipes():
    assert default_recipe("textenv/Arithmetic-v0") == default_recipe("Arithmetic-v0")
    assert default_recipe("Dialogue-v0").seq_len > default_recipe("Arithmetic-v0").seq_len
    assert default_recipe("NoSuchTask-v0") == TinyRecipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        SMALL.steps = 5  # type: ignore[misc]


def test_documents_use_train_references_only(task):
    docs = tiny.documents(task, dataclasses.replace(SMALL, train_references=True))
    assert len(docs) == len(task.corpus) + len(task.split("train"))
    assert {ex.prompt + ex.reference for ex in task.split("train")} <= set(docs)
    eval_prompts = {ex.prompt for ex in task.split("eval")}
    assert not [d for d in docs if d[:d.find("=") + 1] in eval_prompts]


def test_no_corpus_is_an_error(task):
    bare = Task(name="Bare-v0", splits={"train": task.split("train")}, reward=task.reward)
    with pytest.raises(TaskError, match="Bare-v0"):
        pretrain_tiny(bare, SMALL, progress=False)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="arch"):
        tiny.build_model(dataclasses.replace(SMALL, arch="mamba"))


# ----------------------------------------------------------------- Arithmetic-v0
def _solve(prompt: str) -> int:
    expr = prompt.removesuffix("=")
    op = "+" if "+" in expr else "-"
    a, b = expr.split(op)
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def test_arithmetic_splits_are_deterministic_and_disjoint():
    t1, t2, other = arithmetic_task(seed=0), arithmetic_task(seed=0), arithmetic_task(seed=1)
    train, evals = {ex.prompt for ex in t1.split("train")}, {ex.prompt for ex in t1.split("eval")}
    assert len(evals) == len(t1.split("eval")) == 200 and len(train) == len(t1.split("train"))
    assert not train & evals
    assert t1.splits == t2.splits and t1.corpus == t2.corpus
    assert [ex.prompt for ex in other.split("eval")] != [ex.prompt for ex in t1.split("eval")]
    # The eval split does not depend on how many train examples are asked for.
    assert arithmetic_task(seed=0, n_train=10).split("eval") == t1.split("eval")


def test_arithmetic_references_pairs_and_corpus():
    t = arithmetic_task(seed=0)
    for ex in t.split("train") + t.split("eval"):
        assert int(ex.reference) == _solve(ex.prompt) >= 0
        assert ex.chosen == ex.reference and ex.rejected != ex.reference and ex.rejected.isdigit()
        assert ex.meta["op"] in "+-"
    eval_prompts = {ex.prompt for ex in t.split("eval")}
    assert not [line for line in t.corpus if line[:line.find("=") + 1] in eval_prompts]
    # Noisy, but mostly right: the right answers stay in the pretrained model's distribution.
    parsed = [line.split("=") for line in t.corpus if line.count("=") == 1]
    right = [rhs.isdigit() and int(rhs) == _solve(lhs + "=") for lhs, rhs in parsed
             if lhs.count("+") + lhs.count("-") == 1 and all(x.isdigit() for x in lhs.replace("-", "+").split("+"))]
    assert 0.6 < np.mean(right) < 0.95


def test_arithmetic_bad_arguments():
    with pytest.raises(TaskError, match="ops"):
        arithmetic_task(ops="*")
    with pytest.raises(TaskError, match="n_eval"):
        arithmetic_task(n_train=10**6)


def test_arithmetic_reward_values():
    t = arithmetic_task(seed=0, partial_scale=2.0)
    completions = ["19", " 19", "19 apples", "20", "18", "24", "", "nineteen", "-19"]
    r = t.reward(["12+7="] * len(completions), completions, ["19"] * len(completions))
    expected = [1, 1, 1, math.exp(-0.5), math.exp(-0.5), math.exp(-2.5), 0, 0, math.exp(-19)]
    np.testing.assert_allclose(r, expected, atol=1e-9)


# ----------------------------------------------------------------- shipped base models
@pytest.mark.parametrize(("env_id", "kwargs"), tiny.SHIPPED, ids=lambda x: str(x) if x else "defaults")
def test_the_shipped_base_model_is_the_current_recipes(env_id, kwargs):
    """A shipped folder exists for the current recipe, corpus and code version of every variant in
    SHIPPED (a change to any of them without ``python -m algos.tiny`` fails here), its weights are the
    ones its SHA-256 names, and ``pretrain_tiny`` returns it instead of training."""
    import json

    import textenv

    task = textenv.make(env_id, **kwargs).unwrapped.task
    recipe = default_recipe(task.name)
    folder = tiny.SHIPPED_DIR / tiny.model_dir_name(task, recipe)
    assert (folder / "tiny_recipe.json").is_file(), f"{folder.name} is not shipped: run python -m algos.tiny"
    info = json.loads((folder / "tiny_recipe.json").read_text())
    assert info["recipe"] == dataclasses.asdict(recipe) and info["code_version"] == tiny.CODE_VERSION
    assert info["sha256"] == tiny.weights_sha256(folder)
    assert pretrain_tiny(task, progress=False) == folder


def test_exactly_the_current_base_models_are_shipped():
    import textenv

    current = {tiny.model_dir_name(t, default_recipe(t.name))
               for t in (textenv.make(e, **kw).unwrapped.task for e, kw in tiny.SHIPPED)}
    assert {p.name for p in tiny.SHIPPED_DIR.iterdir() if p.is_dir()} == current


def test_the_recipe_rebuilds_a_model_like_the_shipped_one(tmp_path):
    """The shipped Arithmetic-v0 model is what its recipe trains: pretrained again here (another machine's
    floats, so not bitwise), its final loss is within 3% of the shipped one's and the two agree on more greedy
    answers than models of two seeds do. Observed on the 200 eval prompts: on the machine that shipped it, final
    loss 1.1495 vs 1.1495 and agreement 1.000 at 1 and 2 threads; on an AMD EPYC, 1.1495 vs 1.1526 and agreement
    0.635, where the recipe at seed 1 agrees 0.385 with the shipped model and 0.405 with the rebuilt one (loss
    1.1690): 0.5 sits between the two."""
    import json

    import textenv
    from algos import Policy

    task = textenv.make("textenv/Arithmetic-v0").unwrapped.task
    shipped = pretrain_tiny(task, progress=False)
    rebuilt = pretrain_tiny(task, cache_dir=tmp_path, progress=False, shipped=False)
    assert rebuilt != shipped and rebuilt.is_relative_to(tmp_path)
    loss = [json.loads((p / "tiny_recipe.json").read_text())["final_loss"] for p in (shipped, rebuilt)]
    prompts = [ex.prompt for ex in task.split("eval")]
    answers = [Policy.from_pretrained(p).generate(prompts, max_new_tokens=6, greedy=True).texts
               for p in (shipped, rebuilt)]
    agree = np.mean([a == b for a, b in zip(*answers, strict=True)])
    print(f"final loss shipped {loss[0]:.4f}, rebuilt {loss[1]:.4f}; greedy agreement {agree:.3f}")
    assert abs(loss[1] - loss[0]) < 0.03 * loss[0]
    assert agree > 0.5
