"""Policy: the one object that owns the causal LM and its tokenizer.

Everything that touches model or tokenizer lives here: encoding prompts and completions into an
:class:`EncodedBatch`, batched sampling (HF ``generate`` with its KV cache), per-token log-probs of
given completions through one forward path, the model's variants (``reference()``, the frozen
policy that KL terms and DPO compare against), and save/load as safetensors. Prompts are
left-padded and completions right-padded, and position ids are derived from the attention mask, so
a sequence's log-probs do not depend on how much padding its batch needed.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.utils import logging as hf_logging


@contextlib.contextmanager
def _quiet(enabled: bool = True) -> Iterator[None]:
    """Hide transformers' per-file progress bars: local checkpoints load and save in milliseconds."""
    was_on = hf_logging.is_progress_bar_enabled()
    if enabled and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled and was_on:
            hf_logging.enable_progress_bar()


class CheckpointError(ValueError):
    """A saved policy, agent or checkpoint cannot be read; the message names the file."""


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn any failure to read or decode ``path`` into a :class:`CheckpointError` naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err


@dataclass
class EncodedBatch:
    """Prompts (left-padded) and completions (right-padded) as token ids; row ``i`` is one sequence."""

    prompt_ids: torch.Tensor  # [M, P]
    prompt_mask: torch.Tensor  # [M, P]
    completion_ids: torch.Tensor  # [M, T]
    completion_mask: torch.Tensor  # [M, T]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def __getitem__(self, rows: Any) -> EncodedBatch:
        return EncodedBatch(self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows],
                            self.completion_mask[rows])

    @property
    def num_tokens(self) -> int:
        """Completion tokens (EOS included): what a loss over this batch trains on."""
        return int(self.completion_mask.sum())


@dataclass
class Samples:
    """Completions sampled for a batch of prompts; sample ``j`` answers ``prompts[prompt_index[j]]``.

    ``completion_ids`` are right-padded and include the EOS token when the model emitted one;
    ``truncated`` marks samples that hit ``max_new_tokens`` without EOS.
    """

    prompts: list[str]
    prompt_index: torch.Tensor  # [M]
    prompt_ids: torch.Tensor  # [M, P] left-padded
    prompt_mask: torch.Tensor  # [M, P]
    completion_ids: torch.Tensor  # [M, T] right-padded
    completion_mask: torch.Tensor  # [M, T]
    texts: list[str]
    truncated: torch.Tensor  # [M] bool

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    @property
    def batch(self) -> EncodedBatch:
        return EncodedBatch(self.prompt_ids, self.prompt_mask, self.completion_ids, self.completion_mask)


class Policy:
    """A causal LM plus tokenizer with the handful of operations alignment algorithms need."""

    def __init__(self, model: PreTrainedModel, tokenizer: Any, device: str | torch.device | None = None):
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; completions could never end")
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # Dropout off: RL log-probs must be the same numbers at sampling and at update time.
        self.model = model.to(self.device).eval()
        self._reference: Policy | None = None
        self.max_rows = 64  # rows per forward pass when no gradient is needed (bounds memory)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, trust_remote_code: bool = False,
                        **model_kwargs: Any) -> Policy:
        """Load any HF causal LM by hub name (needs a network) or local path."""
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        with _quiet(Path(name_or_path).is_dir()):
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs)
        return cls(model, tokenizer, device=device)

    @classmethod
    def tiny(cls, task: Any, recipe: Any = None, *, cache_dir: str | Path | None = None,
             device: str | torch.device | None = None, progress: bool = True) -> Policy:
        """The embedded default: a tiny byte-level model pretrained on ``task.corpus`` (cached on disk)."""
        from algos.tiny import pretrain_tiny

        path = pretrain_tiny(task, recipe, cache_dir=cache_dir, progress=progress)
        return cls.from_pretrained(path, device=device)

    def save(self, directory: str | Path) -> None:
        """Model (safetensors) and tokenizer, loadable by ``from_pretrained`` or any HF tool."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with _quiet():
            self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)

    load = from_pretrained

    def save_checkpoint(self, directory: str | Path) -> None:
        """``save`` plus what resuming needs besides: the reference policy's weights when it is a copy."""
        self.save(directory)
        if self._reference is not None:
            save_model(self._reference.model, str(Path(directory) / "reference.safetensors"))

    def load_checkpoint(self, directory: str | Path) -> None:
        """Load weights written by ``save_checkpoint`` into this policy (and its reference) in place."""
        directory = Path(directory)
        single = directory / "model.safetensors"
        with reading(single if single.exists() else directory):
            self.model.load_state_dict(Policy.from_pretrained(directory, device=self.device).model.state_dict())
        if (path := directory / "reference.safetensors").exists():
            with reading(path):
                load_model(self.reference().model, str(path), device=str(self.device))

    def reference(self) -> Policy:
        """The frozen reference policy (KL terms, DPO): a copy of the weights at the first call, never trained."""
        if self._reference is None:
            model = copy.deepcopy(self.model).eval().requires_grad_(False)
            self._reference = Policy(model, self.tokenizer, device=self.device)
        return self._reference

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ----------------------------------------------------------------- encoding
    def encode(self, prompts: Sequence[str], completions: Sequence[str], max_tokens: int | None = None,
               ) -> EncodedBatch:
        """Prompt and completion ids of text pairs (EOS appended to each completion, cut to ``max_tokens``)."""
        return EncodedBatch(*self.encode_prompts(prompts), *self.encode_completions(completions, max_tokens))

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids (BOS first when the tokenizer has one) and attention mask."""
        bos = self.tokenizer.bos_token_id
        rows = []
        for text in prompts:
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
            rows.append(ids)
        return self._pad(rows, left=True)

    def encode_completions(self, completions: Sequence[str], max_tokens: int | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded completion ids with EOS appended (cut to ``max_tokens``) and mask."""
        eos = self.tokenizer.eos_token_id
        rows = []
        for text in completions:
            ids = [*self.tokenizer(text, add_special_tokens=False)["input_ids"], eos]
            rows.append(ids[:max_tokens] if max_tokens else ids)
        return self._pad(rows, left=False)

    def _pad(self, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                sl = slice(width - len(r), width) if left else slice(0, len(r))
                ids[i, sl] = torch.tensor(r, dtype=torch.long)
                mask[i, sl] = 1
        return ids.to(self.device), mask.to(self.device)

    def decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
                for ids, m in zip(completion_ids, completion_mask, strict=True)]

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.7,
                 top_p: float = 1.0, max_new_tokens: int = 32, greedy: bool = False,
                 seed: int | Sequence[int] | None = None, batch_size: int | None = None) -> Samples:
        """Sample ``num_samples`` completions per prompt; samples of one prompt are consecutive.

        ``batch_size`` prompts go through each ``generate`` call; ``seed`` seeds the first call, or, as a
        list, each call (so a chunk's samples do not depend on the chunks before it).
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate() got no prompts")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"generate(num_samples={num_samples!r}) needs a whole number >= 1")
        if not greedy and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 when sampling, got {temperature}")
        if not greedy and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        config = GenerationConfig(
            do_sample=not greedy, temperature=temperature if not greedy else None,
            top_p=top_p if not greedy else None, top_k=None,  # no hidden top-k: log-probs must match sampling
            max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id, use_cache=True,
            # A sampled pad token would be indistinguishable from padding.
            suppress_tokens=[self.tokenizer.pad_token_id]
            if self.tokenizer.pad_token_id != self.tokenizer.eos_token_id else None)
        chunk = batch_size or len(prompts)
        starts = range(0, len(prompts), chunk)
        seeds = list(seed) if isinstance(seed, Sequence) else [seed] + [None] * (len(starts) - 1)
        if len(seeds) != len(starts):
            raise ValueError(f"generate() got {len(seeds)} seeds for {len(starts)} chunks of prompts")
        devices = [self.device] if self.device.type == "cuda" else []
        outputs = []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            for start, chunk_seed in zip(starts, seeds, strict=True):
                if chunk_seed is not None:
                    torch.manual_seed(chunk_seed)
                ids, mask = self.encode_prompts(prompts[start:start + chunk])
                seqs = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                outputs.append((ids, mask, seqs[:, ids.shape[1]:]))
        return self._samples(prompts, num_samples, outputs)

    def _samples(self, prompts: list[str], num_samples: int,
                 outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Samples:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        width_p = max(o[0].shape[1] for o in outputs)
        width_c = max(max(o[2].shape[1] for o in outputs), 1)
        p_ids, p_mask, c_ids = [], [], []
        for ids, mask, comp in outputs:
            ids, mask = ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
            p_ids.append(torch.nn.functional.pad(ids, (width_p - ids.shape[1], 0), value=pad))
            p_mask.append(torch.nn.functional.pad(mask, (width_p - mask.shape[1], 0), value=0))
            c_ids.append(torch.nn.functional.pad(comp, (0, width_c - comp.shape[1]), value=pad))
        completion_ids = torch.cat(c_ids)
        is_eos = completion_ids == eos
        # Keep tokens up to and including the first EOS; everything after it is padding.
        keep = (is_eos.cumsum(-1) - is_eos.long()) == 0
        if pad != eos:  # generate() pads finished rows (and short chunks) with pad
            keep &= completion_ids != pad
        completion_ids = completion_ids.masked_fill(~keep, pad)
        completion_mask = keep.long()
        truncated = ~(is_eos & keep).any(-1)
        return Samples(
            prompts=prompts,
            prompt_index=torch.arange(len(prompts), device=self.device).repeat_interleave(num_samples),
            prompt_ids=torch.cat(p_ids), prompt_mask=torch.cat(p_mask),
            completion_ids=completion_ids, completion_mask=completion_mask,
            texts=self.decode(completion_ids, completion_mask), truncated=truncated)

    # ----------------------------------------------------------------- scoring
    def logprobs(self, batch: EncodedBatch, temperature: float = 1.0) -> torch.Tensor:
        """Per-token log-probs ``[M, T]`` of the completion tokens (0 at padding), with gradients if enabled.

        ``temperature`` scales the logits as sampling did, so that an on-policy algorithm's
        log-probs, ratios and KL are those of the distribution its samples came from (as in TRL).
        """
        return self._forward(batch, temperature, hidden=False)[0]

    def logprobs_and_hidden(self, batch: EncodedBatch, temperature: float = 1.0,
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """``logprobs`` plus the last hidden states ``[M, T, H]`` at the positions that predict each
        completion token (what a value head reads)."""
        return self._forward(batch, temperature, hidden=True)

    def _forward(self, batch: EncodedBatch, temperature: float, hidden: bool) -> tuple[torch.Tensor, Any]:
        """The one forward path. Without gradients it runs ``max_rows`` rows at a time, so scoring a large
        batch never holds more than one chunk's activations and logits."""
        if batch.prompt_ids.shape[1] == 0:
            raise ValueError("empty prompts need a tokenizer with a BOS token to condition on")
        if not torch.is_grad_enabled() and len(batch) > self.max_rows:
            parts = [self._forward(batch[i:i + self.max_rows], temperature, hidden)
                     for i in range(0, len(batch), self.max_rows)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]) if hidden else None
        input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
        attention = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         output_hidden_states=hidden, use_cache=False)
        P, T = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
        logits = out.logits[:, P - 1:P - 1 + T].float() / temperature
        token_logps = torch.gather(logits.log_softmax(-1), 2, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
        token_logps = token_logps * batch.completion_mask
        return token_logps, out.hidden_states[-1][:, P - 1:P - 1 + T] if hidden else None

    def text_logprobs(self, prompts: Sequence[str], completions: Sequence[str], max_tokens: int | None = None,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and mask of given text completions (EOS appended), with gradients if enabled."""
        batch = self.encode(prompts, completions, max_tokens)
        return self.logprobs(batch, temperature=temperature), batch.completion_mask
