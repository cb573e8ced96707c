"""The embedded default base model: a tiny causal LM pretrained on a task's corpus in about a minute.

Everything runs offline on CPU: the tokenizer is the byte-level one from ``rewards.tiny`` and the
architecture is a small ``transformers`` Llama (or GPT-2) config trained from scratch with a plain
PyTorch loop. The result is cached on disk under a key that hashes the recipe, the corpus and this
code's version, so a benchmark that builds the same base model for five algorithms trains it once.

Floats differ between machines, so the same recipe pretrained on two CPUs gives two slightly
different models, and RL from them diverges further. The base models of the built-in tasks (the
recipes and task variants in :data:`SHIPPED`) are therefore shipped with the package under
``algos/tiny_models/<task>-<key>/`` (a few hundred KB each, safetensors), and ``pretrain_tiny``
returns the shipped copy when its key matches: every machine starts from identical weights, and
only what happens after the base model can differ. ``python -m algos.tiny`` rebuilds them after a
change to a recipe, a corpus or this code; a test fails while a shipped copy is missing or stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from algos.fields import short_repr
from algos.policy import CheckpointError, reading
from rewards.tiny import byte_tokenizer
from textenv import Task, TaskError
from textenv.multiturn import Episode, MultiTurnTask
from textenv.tools import Toolbox

log = logging.getLogger(__name__)

# Bump when a change here alters the trained weights for the same recipe and corpus.
CODE_VERSION = "1"
BOS_ID, EOS_ID, PAD_ID = 1, 2, 0


def save_atomically(path: Path, marker: str, info: dict, parts: list, quiet: bool = True) -> None:
    """``save_pretrained`` each of ``parts`` (model, tokenizer) and ``info`` as ``marker`` into a temp folder
    beside ``path``, then rename it into place: readers never see half a model, and losing the race to a
    concurrent builder of the same cache entry is fine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    bars = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        for part in parts:
            part.save_pretrained(tmp)
        (tmp / marker).write_text(json.dumps(info, indent=2))
        os.replace(tmp, path)
    except OSError:
        if not (path / marker).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            hf_logging.enable_progress_bar()


def check_marker(path: Path, expected: dict) -> None:
    """The marker of a cached model (``tiny_recipe.json``, ``tiny_chat.json``), checked before the cache is
    reused: a JSON object whose keys in ``expected`` hold exactly those values (what the cache key was made
    from: the recipe, the code version). A damaged or foreign marker is a CheckpointError naming the file
    and the key, never a model silently built from other settings; removing the folder rebuilds it."""
    with reading(path):
        info = json.loads(path.read_text())
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(info).__name__}; remove "
                              f"{path.parent} to rebuild the model")
    for key, value in expected.items():
        if info.get(key) != value:
            raise CheckpointError(f"{path}: key {key!r} is {short_repr(info.get(key))}, but this cache entry is "
                                  f"for {short_repr(value)}; remove {path.parent} to rebuild the model")


@dataclass(frozen=True)
class TinyRecipe:
    """Architecture and pretraining hyperparameters of a tiny base model (all of it goes in the cache key)."""

    arch: str = "llama"            # "llama" (rotary positions, safe with left padding) or "gpt2"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    max_positions: int = 256       # longest prompt + completion the model will ever see
    steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1      # cosine decay from lr down to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    batch_size: int = 32
    seq_len: int = 64              # documents are cut to this many tokens, <bos> and <eos> included
    grad_clip: float = 1.0
    seed: int = 0
    train_references: bool = False  # also train on prompt+reference of the TRAIN split (never eval)


# Tuned so that, sampled at temperature 0.7, the base model's groups of 8 mostly mix good and bad
# outputs (see benchmarks/base_quality.py), in under a minute of pretraining on two CPU cores.
_RECIPES: dict[str, TinyRecipe] = {
    "Arithmetic-v0": TinyRecipe(hidden=64, layers=2, heads=4, steps=1600, batch_size=32, seq_len=16,
                                max_positions=32, lr=3e-3),
    "Sentiment-v0": TinyRecipe(hidden=96, layers=2, heads=4, steps=500, batch_size=16, seq_len=96,
                               max_positions=160),
    "Dialogue-v0": TinyRecipe(hidden=96, layers=2, heads=4, steps=1000, batch_size=16, seq_len=128,
                              max_positions=256),
    "GuessNumber-v0": TinyRecipe(hidden=64, layers=2, heads=4, steps=800, batch_size=8, seq_len=448,
                                 max_positions=512),
    # Measured on KeyValue-v0 of 1-2 hops and 2 chains: this base copies a one-token-per-class item (the
    # consonant of a key, a one-digit number) from the message before a call, but not a run of like tokens
    # (the vowels of a two-syllable key, the digits of 4-digit numbers: their loss stays at ln 5 and ln 10),
    # so KEY_VALUE_SMALL plays one-syllable keys and one-digit numbers (base ~0.78; base seed 1: 0.17).
    "KeyValue-v0": TinyRecipe(hidden=64, layers=2, heads=4, steps=1500, batch_size=8, seq_len=640,
                              max_positions=1024),
}


def default_recipe(task_name: str) -> TinyRecipe:
    """The tuned recipe of a built-in task ("Arithmetic-v0" or "textenv/Arithmetic-v0"), else a generic one."""
    return _RECIPES.get(task_name.removeprefix("textenv/"), TinyRecipe())


# A GuessNumber-v0 small enough for the tiny base to play well but not perfectly (numbers of 4..15, four
# guesses: bisection always wins; base ~0.55 at temperature 0.7): the multi-turn learning tests start from it.
GUESS_NUMBER_SMALL = {"min_high": 4, "max_high": 15, "n_train": 86, "n_eval": 28, "guesses": 4}
# A KeyValue-v0 the tiny base can play (see its recipe): chains of 1-2 keys of one syllable, 2 chains, numbers of
# one digit; the multi-turn learning tests start from its base too.
KEY_VALUE_SMALL = {"min_hops": 1, "max_hops": 2, "n_chains": 2, "syllables": 1, "value_digits": 1}
# The task variants whose default-recipe base models ship with the package: the tests' and the built-in
# benchmark configs' (quick.toml evaluates Arithmetic-v0 on 400 prompts, which changes its corpus).
SHIPPED: list[tuple[str, dict]] = [
    ("textenv/Arithmetic-v0", {}),
    ("textenv/Arithmetic-v0", {"n_eval": 400}),
    ("textenv/Dialogue-v0", {}),
    ("textenv/Sentiment-v0", {}),
    ("textenv/GuessNumber-v0", {}),
    ("textenv/GuessNumber-v0", GUESS_NUMBER_SMALL),
    ("textenv/KeyValue-v0", KEY_VALUE_SMALL),
]
SHIPPED_DIR = Path(__file__).parent / "tiny_models"


def cache_root() -> Path:
    """``$GRAO_CACHE`` or ``~/.cache/grao-lab``: where tiny models live between runs."""
    return Path(os.environ.get("GRAO_CACHE") or Path.home() / ".cache" / "grao-lab")


def build_model(recipe: TinyRecipe) -> PreTrainedModel:
    """A freshly initialised model for the byte vocabulary (uses the global torch RNG)."""
    vocab = len(byte_tokenizer())
    ids = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    if recipe.arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=recipe.hidden, num_hidden_layers=recipe.layers,
                             num_attention_heads=recipe.heads, num_key_value_heads=recipe.heads,
                             intermediate_size=recipe.mlp_ratio * recipe.hidden,
                             max_position_embeddings=recipe.max_positions, tie_word_embeddings=True, **ids)
        return LlamaForCausalLM(config)
    if recipe.arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_embd=recipe.hidden, n_layer=recipe.layers,
                            n_head=recipe.heads, n_inner=recipe.mlp_ratio * recipe.hidden,
                            n_positions=recipe.max_positions, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, **ids)
        return GPT2LMHeadModel(config)
    raise ValueError(f"TinyRecipe.arch must be 'llama' or 'gpt2', got {recipe.arch!r}")


# The chat template of a multi-turn task's tiny base model: ``role: content`` lines, an assistant turn closed
# by ``<eos>`` (so that sampling stops at the end of a turn), its tool calls in the Hermes format after its
# text, and the tools named on the first line (the model learns their use from the corpus, not a schema).
MULTITURN_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if tools %}{{- 'tools: ' }}{%- for t in tools %}{{- t['function']['name'] }}"
    "{%- if not loop.last %}{{- ', ' }}{%- endif %}{%- endfor %}{{- '\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{{- m['role'] + ': ' + m['content'] }}"
    "{%- for c in m.get('tool_calls', []) %}"
    "{%- if m['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n' + {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson"
    " + '\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- if m['role'] == 'assistant' %}{{- eos_token }}{%- endif %}{{- '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'assistant: ' }}{%- endif %}"
)
# The share of a multi-turn corpus' moves that are not the oracle's but a move of another episode: the base
# model then plays well but not perfectly (groups mix successes and failures), and it has seen recoveries.
MULTITURN_NOISE = 0.25


def tokenizer_for(task: Task | MultiTurnTask) -> PreTrainedTokenizerFast:
    """The byte tokenizer of a task's tiny base model; a multi-turn task's has :data:`MULTITURN_TEMPLATE`."""
    tok = byte_tokenizer()
    if isinstance(task, MultiTurnTask):
        tok.chat_template = MULTITURN_TEMPLATE
    return tok


# A multi-turn corpus holds at least this many conversations: a task of few train rows plays each several
# times (other noisy moves each time), so that the base model learns a policy over positions rather than
# the few conversations by heart.
MULTITURN_DOCUMENTS = 2000


def multiturn_documents(task: MultiTurnTask, seed: int = 0, noise: float = MULTITURN_NOISE) -> list[str]:
    """Conversations of the train rows, rendered with :data:`MULTITURN_TEMPLATE` (less its BOS, which
    pretraining adds): every row once, or as many times over as :data:`MULTITURN_DOCUMENTS` needs. Each move
    is the oracle's, or with probability ``noise`` the oracle's move of another row's episode (a plausible
    move for the wrong episode, which the env answers as it would any)."""
    rows = task.split("train")
    rng = np.random.default_rng(seed)
    pool = []  # the oracle's moves of the train split, played cleanly
    for row in rows[:200]:
        episode = Episode(task, row, np.random.default_rng(seed))
        while not (episode.terminated or episode.truncated):
            pool.append(move := task.oracle(episode.state))
            episode.step(move)
    tok, schemas = tokenizer_for(task), Toolbox(task.tools, where=task.name).schemas
    docs = []
    for row in [row for _ in range(-(-MULTITURN_DOCUMENTS // len(rows))) for row in rows]:
        episode = Episode(task, row, np.random.default_rng(seed))
        while not (episode.terminated or episode.truncated):
            move = pool[int(rng.integers(len(pool)))] if rng.random() < noise else task.oracle(episode.state)
            episode.step(move)
        text = tok.apply_chat_template(episode.messages, tools=schemas or None, tokenize=False)
        docs.append(text.removeprefix(tok.bos_token))
    return docs


def documents(task: Task | MultiTurnTask, recipe: TinyRecipe) -> list[str]:
    """The pretraining text: the task corpus, plus train prompt+reference if the recipe asks; for a multi-turn
    task, :func:`multiturn_documents`."""
    if isinstance(task, MultiTurnTask):
        return multiturn_documents(task, recipe.seed)
    docs = list(task.corpus or [])
    if recipe.train_references:
        docs += [ex.prompt + ex.reference for ex in task.with_references("train")]
    if not docs:
        raise TaskError(f"task {task.name!r} has no corpus to pretrain a tiny model on")
    return docs


def cache_key(recipe: TinyRecipe, docs: list[str]) -> str:
    """Hash of (recipe, corpus, code version): same inputs, same directory."""
    h = hashlib.sha256(json.dumps({"recipe": dataclasses.asdict(recipe), "code": CODE_VERSION},
                                  sort_keys=True).encode())
    for doc in docs:
        h.update(doc.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def _encode(docs: list[str], seq_len: int) -> list[torch.Tensor]:
    tok = byte_tokenizer()
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    return [torch.tensor(([BOS_ID] + x + [EOS_ID])[:seq_len]) for x in ids]


def _batch(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row; padding is masked out of the loss (causal attention never sees it)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        labels[i, :len(r)] = r
    return ids, labels


def _lr_at(step: int, recipe: TinyRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    frac = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * frac))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def train(docs: list[str], recipe: TinyRecipe, progress: bool = True) -> tuple[PreTrainedModel, list[float]]:
    """Pretrain from scratch with AdamW, warmup + cosine decay and grad clipping; deterministic per seed."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    model.train()
    rows = _encode(docs, recipe.seq_len)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(recipe.seed)
    order, pos, losses = torch.randperm(len(rows), generator=gen), 0, []
    bar = tqdm(range(recipe.steps), desc="pretrain tiny", disable=not progress, mininterval=1.0)
    for step in bar:
        if pos + recipe.batch_size > len(order):     # a new epoch: reshuffle
            order, pos = torch.randperm(len(rows), generator=gen), 0
        ids, labels = _batch([rows[int(i)] for i in order[pos:pos + recipe.batch_size]])
        pos += recipe.batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    return model, losses


def _say(msg: str, progress: bool) -> None:
    log.info(msg)
    if progress and not log.isEnabledFor(logging.INFO):
        print(msg, file=sys.stderr)


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint's ``model.safetensors``: what a report prints so two runs' bases can be told apart."""
    h = hashlib.sha256()
    with open(Path(path) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_dir_name(task: Task, recipe: TinyRecipe, docs: list[str] | None = None) -> str:
    """``<task>-<key>``: the folder a tiny model of this task and recipe lives in, shipped or cached
    (``docs``: the pretraining documents, when the caller has them already)."""
    name = task.name.removeprefix("textenv/").replace("/", "_")
    return f"{name}-{cache_key(recipe, documents(task, recipe) if docs is None else docs)}"


def pretrain_tiny(task: Task, recipe: TinyRecipe | None = None, cache_dir: str | Path | None = None,
                  progress: bool = True, shipped: bool = True) -> Path:
    """Return the directory of a tiny model pretrained on ``task``'s corpus, training it only if not cached.

    With ``shipped`` (the default) a copy shipped with the package for the same key is returned first,
    so every machine starts from the same weights; ``shipped=False`` trains (or reuses the cache) as if
    none were shipped. The directory holds ``save_pretrained`` output (safetensors), the byte tokenizer
    and ``tiny_recipe.json``; load it with ``AutoModelForCausalLM.from_pretrained(path)``. It is written
    to a temporary directory and renamed into place, so an interrupted run never leaves half a model.
    """
    recipe = recipe or default_recipe(task.name)
    docs = documents(task, recipe)
    folder = model_dir_name(task, recipe, docs)
    expected = {"recipe": dataclasses.asdict(recipe), "code_version": CODE_VERSION}
    if shipped and (SHIPPED_DIR / folder / "tiny_recipe.json").exists():
        check_marker(SHIPPED_DIR / folder / "tiny_recipe.json", expected)
        _say(f"tiny base model for {task.name}: the shipped {folder}", progress)
        return SHIPPED_DIR / folder
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    path = root / "tiny" / folder
    if (path / "tiny_recipe.json").exists():
        check_marker(path / "tiny_recipe.json", expected)
        _say(f"tiny base model for {task.name}: reusing cached {path}", progress)
        return path
    start = time.perf_counter()
    model, losses = train(docs, recipe, progress)
    seconds = time.perf_counter() - start
    info = {"task": task.name, "recipe": dataclasses.asdict(recipe), "code_version": CODE_VERSION,
            "documents": len(docs), "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "train_seconds": round(seconds, 1), "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    save_atomically(path, "tiny_recipe.json", info, [model, tokenizer_for(task)], quiet=not progress)
    _say(f"tiny base model for {task.name}: trained in {seconds:.0f}s, saved to {path}", progress)
    return path


def ship(tasks: list[tuple[str, dict]] = SHIPPED, target: Path = SHIPPED_DIR, progress: bool = True) -> list[Path]:
    """Pretrain the default-recipe base model of each task variant and write it where the package ships it.

    Old shipped folders of those tasks are removed, so the package holds exactly the current keys. Run it
    (``python -m algos.tiny``) after changing a recipe, a built-in corpus or :data:`CODE_VERSION`, and
    commit the result: every user then starts RL from these weights.
    """
    import textenv

    written = []
    for env_id, kwargs in tasks:
        task = textenv.make(env_id, **kwargs).unwrapped.task
        recipe = default_recipe(task.name)
        folder = target / model_dir_name(task, recipe)
        if not (folder / "tiny_recipe.json").exists():
            with tempfile.TemporaryDirectory() as tmp:
                built = pretrain_tiny(task, recipe, cache_dir=tmp, progress=progress, shipped=False)
                info = json.loads((built / "tiny_recipe.json").read_text())
                info["sha256"] = weights_sha256(built)
                (built / "tiny_recipe.json").write_text(json.dumps(info, indent=2))
                target.mkdir(parents=True, exist_ok=True)
                shutil.copytree(built, folder)
        written.append(folder)
    keep = {p.name for p in written}
    for old in target.iterdir() if target.exists() else []:
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old)
    return written


if __name__ == "__main__":
    argparse.ArgumentParser(prog="python -m algos.tiny", description=ship.__doc__.splitlines()[0]).parse_args()
    for path in ship():
        print(path)
