"""Learned rewards: a tiny Bradley-Terry reward model trained here, or any HF sequence classifier.

The Bradley-Terry model is the classic RLHF reward model in miniature: a small Llama-style
transformer over the byte tokenizer, with a scalar head reading the final token, trained on
(prompt, chosen, rejected) triples to make r(chosen) > r(rejected). It trains in seconds on a CPU,
so the whole preference -> reward -> policy loop runs offline. Weights are saved with safetensors
and the architecture as JSON: nothing is unpickled when a reward model is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaModel

from rewards.messages import conversation_text, prompt_text
from rewards.registry import RewardError, register
from rewards.tiny import byte_tokenizer

CONFIG_FILE, WEIGHTS_FILE = "reward_config.json", "model.safetensors"


@dataclass
class BTConfig:
    """Architecture of the tiny reward model (about 150k parameters with the defaults)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 256


def read_bt_config(path: Path) -> BTConfig:
    """A saved reward model's ``reward_config.json``, every key checked (each a whole number >= 1): a damaged
    file is a RewardError naming the file and the key, not a TypeError from the model's constructor."""
    where = f"bradley_terry: {str(path)!r}"
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RewardError(f"{where} is not valid JSON ({err})") from err
    if not isinstance(raw, dict) or raw.pop("model_type", None) != "bradley_terry":
        raise RewardError(f"{where} is not a bradley_terry config")
    known = {f.name for f in fields(BTConfig)}
    for key, value in raw.items():
        if key not in known:
            raise RewardError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(known))}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise RewardError(f"{where}: key {key!r} must be a whole number >= 1, got {value!r}")
    return BTConfig(**raw)


class BradleyTerryRewardModel(torch.nn.Module):
    """Transformer over bytes + linear head on the last real token (an EOS appended to every text)."""

    def __init__(self, config: BTConfig | None = None):
        super().__init__()
        self.config = config or BTConfig()
        c = self.config
        self.tokenizer = byte_tokenizer()
        self.backbone = LlamaModel(LlamaConfig(
            vocab_size=len(self.tokenizer), hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_heads,
            max_position_embeddings=c.max_length, pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id, eos_token_id=self.tokenizer.eos_token_id,
        ))
        self.head = torch.nn.Linear(c.hidden_size, 1)
        self.history: list[dict[str, float]] = []  # filled by train_bradley_terry

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def encode(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """BOS + (prompt + completion) + EOS, truncated from the left (the end of the answer matters
        most), right-padded so positions do not depend on the batch. A conversation is rendered plainly."""
        tok, keep = self.tokenizer, self.config.max_length - 2
        texts = [conversation_text(p, c) for p, c in zip(prompts, completions, strict=True)]
        rows = [[tok.bos_token_id, *ids[-keep:], tok.eos_token_id] for ids in tok(texts)["input_ids"]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids.to(self.device), mask.to(self.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scalar reward per row, [B], read at the last non-pad position."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        return self.head(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Rewards for many texts, in batches, without building a graph."""
        was_training = self.training
        self.eval()
        out = []
        for s in range(0, len(completions), batch_size):
            ids, mask = self.encode(prompts[s: s + batch_size], completions[s: s + batch_size])
            out.append(self(ids, mask).float().cpu().numpy())
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros(0)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(
            {"model_type": "bradley_terry", **asdict(self.config)}, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> BradleyTerryRewardModel:
        directory = Path(directory)
        if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise RewardError(f"bradley_terry: no saved reward model in {str(directory)!r} "
                              f"(expected {CONFIG_FILE} and {WEIGHTS_FILE})")
        model = cls(read_bt_config(directory / CONFIG_FILE))
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.to(device).eval()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_c - r_r), the negative log-likelihood that the chosen answer wins."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def train_bradley_terry(prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], *,
                        steps: int = 200, lr: float = 3e-3, batch_size: int = 16, seed: int = 0,
                        weight_decay: float = 0.0, config: BTConfig | None = None,
                        model: BradleyTerryRewardModel | None = None,
                        device: str | torch.device = "cpu") -> BradleyTerryRewardModel:
    """Fit a reward model to preference pairs; ``model.history`` holds (loss, accuracy) per step."""
    n = len(prompts)
    if n == 0 or len(chosen) != n or len(rejected) != n:
        raise RewardError(f"train_bradley_terry: need equal, non-empty prompts/chosen/rejected, got "
                          f"{n}/{len(chosen)}/{len(rejected)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (model if model is not None else BradleyTerryRewardModel(config)).to(device)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        idx = rng.choice(n, size=min(batch_size, n), replace=False)
        p = [prompts[i] for i in idx]
        ids, mask = model.encode(p + p, [chosen[i] for i in idx] + [rejected[i] for i in idx])
        r = model(ids, mask)
        loss = bradley_terry_loss(r[: len(idx)], r[len(idx):])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.history.append({"loss": loss.item(), "accuracy": (r[: len(idx)] > r[len(idx):]).float().mean().item()})
    return model.eval()


@register("bradley_terry")
class BradleyTerryReward:
    """A trained BradleyTerryRewardModel as a reward: ``model`` is a saved directory or the model."""

    name = "bradley_terry"

    def __init__(self, model: str | Path | BradleyTerryRewardModel, batch_size: int = 32,
                 device: str | torch.device = "cpu"):
        if isinstance(model, str | Path):
            model = BradleyTerryRewardModel.load(model, device=device)
        if not isinstance(model, BradleyTerryRewardModel):
            raise RewardError(f"bradley_terry: model must be a path or a BradleyTerryRewardModel, "
                              f"got {type(model).__name__}")
        self.model, self.batch_size = model.eval(), batch_size

    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        return self.model.score(list(prompts), list(completions), batch_size=self.batch_size)


def _looks_local(spec: str | Path) -> bool:
    """A Path, or a str that is clearly a filesystem path rather than a hub id ("org/name")."""
    s = str(spec)
    return isinstance(spec, Path) or s.startswith((".", "/", "~")) or s.count("/") > 1 or "\\" in s


@register("sequence_classifier")
class SequenceClassifierReward:
    """Any HF ``AutoModelForSequenceClassification`` (name, path or model object) as a reward.

    ``label`` picks an output (index or name from ``id2label``); a single-logit model needs none.
    ``output`` is the raw ``"logit"`` or the ``"prob"`` (softmax over labels, sigmoid for one logit).
    ``inputs`` says what the classifier reads: ``"concat"`` prompt + completion, ``"pair"`` the two
    as a text pair (cross-encoder reward models), or ``"completion"`` alone (e.g. a sentiment model).
    With ``"concat"`` a conversational prompt goes through the tokenizer's chat template with the
    completion as the assistant's reply, as chat reward models are trained (``rewards.messages``).
    Remote code is not run unless ``trust_remote_code=True``.
    """

    name = "sequence_classifier"

    def __init__(self, model: Any, tokenizer: Any = None, label: int | str | None = None,
                 output: str = "logit", inputs: str = "concat", batch_size: int = 16, max_length: int = 512,
                 trust_remote_code: bool = False, device: str | torch.device = "cpu"):
        if output not in ("logit", "prob"):
            raise RewardError(f"sequence_classifier: output must be 'logit' or 'prob', got {output!r}")
        if inputs not in ("concat", "pair", "completion"):
            raise RewardError(f"sequence_classifier: inputs must be 'concat', 'pair' or 'completion', got {inputs!r}")
        if isinstance(model, str | Path):
            if _looks_local(model) and not Path(model).exists():
                raise RewardError(f"sequence_classifier: cannot load model {str(model)!r}: no such directory")
            tokenizer = model if tokenizer is None else tokenizer
            try:
                model = AutoModelForSequenceClassification.from_pretrained(
                    str(model), trust_remote_code=trust_remote_code)
            except (OSError, ValueError) as err:
                raise RewardError(f"sequence_classifier: cannot load model {str(model)!r}: {err}") from err
        if tokenizer is None:
            raise RewardError("sequence_classifier: pass a tokenizer (or a model name/path to load one from)")
        if isinstance(tokenizer, str | Path):
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), trust_remote_code=trust_remote_code)
            except (OSError, ValueError) as err:
                raise RewardError(f"sequence_classifier: cannot load tokenizer {str(tokenizer)!r}: {err}") from err
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise RewardError("sequence_classifier: the tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer = model.to(device).eval(), tokenizer
        self.label = self._label_index(label)
        self.output, self.inputs, self.batch_size, self.max_length = output, inputs, batch_size, max_length

    def _label_index(self, label: int | str | None) -> int:
        n, id2label = self.model.config.num_labels, dict(self.model.config.id2label or {})
        if label is None:
            if n != 1:
                raise RewardError(f"sequence_classifier: the model has {n} labels {id2label}; pass label=")
            return 0
        if isinstance(label, str):
            names = {str(v): int(k) for k, v in id2label.items()}
            if label not in names:
                raise RewardError(f"sequence_classifier: unknown label {label!r}; labels: {sorted(names)}")
            return names[label]
        if not 0 <= int(label) < n:
            raise RewardError(f"sequence_classifier: label index {label} out of range for {n} labels")
        return int(label)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str],
                 references: Sequence[str | None] | None = None, **columns: Any) -> np.ndarray:
        out = []
        device = next(self.model.parameters()).device
        for s in range(0, len(completions), self.batch_size):
            p, c = list(prompts[s: s + self.batch_size]), list(completions[s: s + self.batch_size])
            args = {"concat": ([conversation_text(a, b, self.tokenizer) for a, b in zip(p, c, strict=True)],),
                    "pair": ([prompt_text(a) for a in p], c), "completion": (c,)}
            enc = self.tokenizer(*args[self.inputs], padding=True, truncation=True, max_length=self.max_length,
                                 padding_side="right", return_tensors="pt").to(device)
            logits = self.model(**enc).logits.float()
            if self.output == "prob":
                logits = torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)
            out.append(logits[:, self.label].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)
