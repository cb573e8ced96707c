"""Shared fixtures: tiny randomly initialised models (milliseconds to build, no download).

``GRAO_TEST_THREADS`` (default 1) sets torch's thread count for the whole run, and
``GRAO_TEST_BASE_SEED`` (default 0, the shipped base model) the pretraining seed of the tiny base
model the learning tests start from. Both change float sums the way another machine would: run the learning
tests at 2 threads from base seed 1 and a margin tuned to one draw fails.
"""

import os

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from algos import Policy
from rewards.tiny import byte_tokenizer

THREADS = int(os.environ.get("GRAO_TEST_THREADS", "1"))  # tiny models gain little from more; a busy machine loses a lot
BASE_SEED = int(os.environ.get("GRAO_TEST_BASE_SEED", "0"))
torch.set_num_threads(THREADS)


# After the learning files, the slowest files (seconds on one worker, measured on an AMD EPYC), so that the
# short ones fill in at the end and neither worker runs a long file alone while the other is done.
SLOW_FILES = ("test_smollm2.py", "test_distributed.py", "test_bench_executors.py", "test_tiny.py",
              "test_reliability_cli.py")  # about 150, 120, 65, 50, 40


def pytest_collection_modifyitems(session, config, items) -> None:
    """The learning tests first: their three files (test_learning, test_learning_multiturn, test_learning_tools)
    are the slowest, so under the README's ``pytest -n 2 --dist loadfile --no-loadscope-reorder`` the two
    workers start with one each and the first free takes the third; then ``SLOW_FILES``, then the rest in its
    order (the sort is stable)."""
    def rank(item) -> int:
        name = item.path.name
        if name.startswith("test_learning"):
            return 0
        return 1 + SLOW_FILES.index(name) if name in SLOW_FILES else 1 + len(SLOW_FILES)

    items.sort(key=rank)


def pytest_report_header(config) -> str:
    return (f"grao-lab: torch threads {THREADS}, tiny base-model seed {BASE_SEED} "
            "(GRAO_TEST_THREADS, GRAO_TEST_BASE_SEED)")


def mean_success(policy: Policy, env, seeds, **settings) -> float:
    """A multi-turn env's success rate averaged over ``evaluate_episodes`` with each of the episode ``seeds``
    (temperature 0.7 unless ``settings`` say otherwise): what the multi-turn learning tests compare."""
    from algos.multiturn_eval import evaluate_episodes

    return float(np.mean([evaluate_episodes(policy, env, seed=s, **settings)[0]["success_rate"] for s in seeds]))


def random_policy(arch: str = "llama", seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    tok = byte_tokenizer()
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=128, **ids))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4,
                                           n_positions=128, **ids))
    return Policy(model, tok)


@pytest.fixture(params=["llama", "gpt2"])
def policy(request) -> Policy:
    return random_policy(request.param)


def bench_toml(base_path, *, title: str = "test", seeds: str = "[0]", max_new_tokens: int = 4, prompts: int = 4,
               every: int = 2, task: str = "", body: str = "") -> str:
    """A tiny benchmark config: one Arithmetic task, two steps of two prompts x G = 2 from ``base_path``.
    ``task`` adds lines to the task's table (kwargs), ``body`` the algorithms and any other table."""
    return f"""title = "{title}"
seeds = {seeds}
[base]
model = "{base_path}"
[budget]
steps = 2
prompts_per_step = 2
group_size = 2
max_new_tokens = {max_new_tokens}
[eval]
prompts = {prompts}
every = {every}
[tasks."textenv/Arithmetic-v0"]
{task}
{body}"""
