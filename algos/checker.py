"""``check_agent``: the Agent contract as a checker, as Gymnasium ships ``check_env`` for environments.

Run it on every algorithm you register (the project's tests run it over ``algos.list_algorithms()``).
Each check trains a tiny randomly initialised model for a few steps, offline, in seconds:

1. ``update`` statistics are finite floats and include ``loss`` and ``tokens/trained``;
2. the same seed gives the same numbers (statistics and weights, bitwise);
3. a checkpoint plus ``resume_from`` ends bitwise where an uninterrupted run ends;
4. ``Agent.save`` / ``Agent.load`` round-trips the config, step, state, weights and behaviour;
5. a step in micro-batches (``micro_batch_size=1``) equals the full-batch step within float tolerance,
   which holds only if the loss is normalised by the whole step's totals.

A broken promise raises :class:`AgentCheckError` naming the algorithm and the promise.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

import textenv
from algos.agent import Agent, get_algorithm, make
from algos.policy import Policy

# Timing entries legitimately differ between two runs of the same step.
_TIMING = ("time/", "tokens/per_s")


class AgentCheckError(AssertionError):
    """An algorithm breaks the Agent contract; the message names the algorithm and the promise."""


def check_agent(name: str, *, env: Any = None, policy_factory: Callable[[], Policy] | None = None,
                steps: int = 2, **config: Any) -> None:
    """Check that algorithm ``name`` keeps the Agent contract; raise :class:`AgentCheckError` if not.

    ``env`` defaults to ``textenv/Arithmetic-v0`` (it has references and preference pairs);
    ``policy_factory`` must build the same initial weights on every call (default: a tiny random Llama
    with the byte tokenizer); ``config`` overrides the small default settings.
    """
    cls = get_algorithm(name)
    env = env if env is not None else textenv.make("textenv/Arithmetic-v0")
    factory = policy_factory or _tiny_random_policy
    fields = cls.config_class.__dataclass_fields__
    group = {"group_size": 3} if "group_size" in fields else {}
    settings = {"batch_size": 4, "max_new_tokens": 4, "seed": 0, **group, **config}

    def agent(**overrides: Any) -> Agent:
        return make(name, factory(), **{**settings, **overrides})

    def fail(promise: str, detail: str) -> None:
        raise AgentCheckError(f"algorithm {name!r} ({cls.__name__}) breaks the Agent contract: {promise}: {detail}")

    @contextlib.contextmanager
    def promise(text: str) -> Iterator[None]:
        try:
            yield
        except AgentCheckError:
            raise
        except Exception as err:  # any crash inside a check is that promise broken
            fail(text, f"{type(err).__name__}: {err}")

    with promise(text := "update() statistics are finite floats and include 'loss' and 'tokens/trained'"):
        first = agent()
        history = first.learn(env, max_steps=steps, progress=False)
        for record in history:
            missing = {"loss", "tokens/trained"} - record.keys()
            bad = {k: v for k, v in record.items()
                   if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v)}
            if missing or bad:
                fail(text, f"step {record.get('step')}: missing {sorted(missing)}, not finite floats {bad}")

    with promise(text := "the same seed gives the same numbers"):
        second = agent()
        second.learn(env, max_steps=steps, progress=False)
        _same_history(fail, text, history, second.history)
        _same_weights(fail, text, first, second, exact=True)

    with tempfile.TemporaryDirectory() as tmp:
        with promise(text := "checkpoint + resume equals an uninterrupted run"):
            straight = agent()
            straight.learn(env, max_steps=2 * steps, progress=False)
            interrupted = agent()
            interrupted.learn(env, max_steps=steps, checkpoint_every=steps, checkpoint_dir=Path(tmp) / "ckpt",
                              progress=False)
            resumed = make(name, _perturbed(factory()), **settings)  # resuming must overwrite every weight
            resumed.learn(env, max_steps=2 * steps, resume_from=Path(tmp) / "ckpt" / f"step-{steps}", progress=False)
            _same_history(fail, text, straight.history, resumed.history)
            _same_weights(fail, text, straight, resumed, exact=True)
            if resumed.state() != straight.state():
                fail(text, f"state() {resumed.state()} after resuming, {straight.state()} without")

        with promise(text := "Agent.save / Agent.load round trip"):
            first.save(Path(tmp) / "saved")
            loaded = Agent.load(Path(tmp) / "saved")
            if type(loaded) is not type(first) or loaded.config != first.config or loaded.step != first.step:
                fail(text, f"got {type(loaded).__name__} at step {loaded.step} with {loaded.config}")
            if loaded.state() != first.state():
                fail(text, f"state() {loaded.state()} after loading, {first.state()} before")
            _same_weights(fail, text, first, loaded, exact=True)
            prompts = [ex.prompt for ex in textenv.batched(env).task.split("eval")[:3]]
            if loaded.act(prompts, seed=0) != first.act(prompts, seed=0):
                fail(text, "the loaded agent samples other completions with the same seed")

    with promise(text := "a step in micro-batches equals the full-batch step (losses normalised by the step's totals)"):
        one_step = {"num_iterations": 1, "num_minibatches": 1}
        whole, parts = agent(**one_step), agent(**one_step, micro_batch_size=1)
        whole_loss = whole.learn(env, max_steps=1, progress=False)[0]["loss"]
        parts_loss = parts.learn(env, max_steps=1, progress=False)[0]["loss"]
        if not math.isclose(whole_loss, parts_loss, rel_tol=1e-4, abs_tol=1e-6):
            fail(text, f"loss {parts_loss} with micro_batch_size=1, {whole_loss} without")
        # Gradients, not weights: Adam's first step is about lr * sign(g), which float noise can flip.
        for (key, a), b in zip(_parameters(whole).items(), _parameters(parts).values(), strict=True):
            if (a.grad is None) != (b.grad is None) or (
                    a.grad is not None and not torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-6)):
                fail(text, f"the gradient of {key} differs")


def _tiny_random_policy() -> Policy:
    """A two-layer Llama with the byte tokenizer, the same weights on every call."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rewards.tiny import byte_tokenizer

    tokenizer = byte_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=0, bos_token_id=1, eos_token_id=2))
    return Policy(model, tokenizer)


def _perturbed(policy: Policy) -> Policy:
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.01)
    return policy


def _tensors(agent: Agent) -> dict[str, torch.Tensor]:
    tensors = {f"policy.{k}": v for k, v in agent.policy.model.state_dict().items()}
    for module_name, module in agent.modules().items():
        tensors.update({f"{module_name}.{k}": v for k, v in module.state_dict().items()})
    return tensors


def _parameters(agent: Agent) -> dict[str, torch.nn.Parameter]:
    params = {f"policy.{k}": v for k, v in agent.policy.model.named_parameters() if v.requires_grad}
    for module_name, module in agent.modules().items():
        params.update({f"{module_name}.{k}": v for k, v in module.named_parameters()})
    return params


def _same_weights(fail: Callable[[str, str], None], promise: str, a: Agent, b: Agent, exact: bool) -> None:
    ta, tb = _tensors(a), _tensors(b)
    if ta.keys() != tb.keys():
        fail(promise, f"different tensors: {sorted(ta.keys() ^ tb.keys())[:5]}")
    for key, value in ta.items():
        other = tb[key].to(value.device)
        same = torch.equal(value, other) if exact else torch.allclose(value, other, rtol=1e-4, atol=1e-6)
        if not same:
            diff = (value.float() - other.float()).abs().max().item()
            fail(promise, f"weights differ at {key} (max abs difference {diff:.3g})")


def _same_history(fail: Callable[[str, str], None], promise: str, a: list[dict[str, float]],
                  b: list[dict[str, float]]) -> None:
    if len(a) != len(b):
        fail(promise, f"{len(a)} records against {len(b)}")
    for ra, rb in zip(a, b, strict=True):
        for key in ra.keys() | rb.keys():
            if key.startswith(_TIMING):
                continue
            va, vb = ra.get(key), rb.get(key)
            if va != vb and not (isinstance(va, float) and isinstance(vb, float) and math.isnan(va) and math.isnan(vb)):
                fail(promise, f"step {ra.get('step')}: {key} = {va!r} against {vb!r}")
