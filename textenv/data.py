"""Loaders that turn datasets into ``Example`` lists: JSONL, Hugging Face ``datasets``, Anthropic HH-RLHF.

Column mapping: ``prompt=`` names the prompt column; ``reference=``, ``chosen=`` and ``rejected=`` name
optional columns (``None``: the field stays empty). **Every other column reaches the reward**, as TRL
passes every dataset column to its reward functions: it travels in ``Example.meta`` under its own name
and arrives as a keyword column. ``meta=`` renames (``{"level": "difficulty"}`` passes the column
``difficulty`` as ``level``) or also passes a column that feeds a field (``meta=["solution"]`` beside
``reference="solution"``). A column named like one of the reward's own arguments (``prompts``,
``completions``, ``references``, ``completion_ids``, ``where``) must be renamed. A named column that is
missing, or a dataset with no rows, raises ``TaskError`` naming it; in JSON lines another column that
some rows lack is None in those rows, as ``datasets`` reads such a file.

**Implicit prompts** (TRL's usual DPO format): when ``chosen`` and ``rejected`` hold whole conversations
(or texts) that share their prompt, the prompt is extracted as TRL's ``extract_prompt`` does (see
``extract_prompt``). That happens with ``prompt=None``, or with the default ``prompt="prompt"`` when the
dataset has no ``prompt`` column, or, per row as TRL's ``maybe_extract_prompt``, when its ``prompt`` is
text while ``chosen`` is a conversation (as in UltraFeedback; that text still reaches the reward as the
column ``prompt``). ``reference=`` naming the chosen (or rejected) column then gives its answer part. A
pair with no shared prompt, identical answers, or one answer the start of the other is an error naming
the row; so is ``prompt=`` naming the chosen or rejected column itself.

Conversational data (TRL's format) loads as it is: a prompt column of message lists, ``reference=
"completion"``, and ``chosen``/``rejected`` as assistant message lists. ``messages=`` names a column of
whole conversations (TRL's "messages") instead of ``prompt=``/``reference=``: the reference is the
last message, which must be the assistant's, and the prompt every message before it. A malformed
message is an error naming the source, the row and the column.

The HH-RLHF format is a dialogue in one string, "\\n\\nHuman: ...\\n\\nAssistant: ...", possibly with
several turns. ``parse_hh`` splits it TRL-style: the prompt is everything up to and including the last
"\\n\\nAssistant:", the answer is the rest (with its leading space, so prompt + answer is the original).
With ``messages=True`` the dialogue becomes messages for chat models instead: one user or assistant
message per turn (text stripped), the answers one assistant message each.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from rewards.messages import is_messages
from textenv.task import RESERVED_META, Example, TaskError, Text, check_text, split_conversation

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TRL_PROMPT = "prompt"  # TRL's name for the prompt column
HF_FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _meta_map(meta: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    if meta is None:
        return {}
    if isinstance(meta, str):
        return {meta: meta}
    return dict(meta) if isinstance(meta, Mapping) else {c: c for c in meta}


def _text_fields(prompt: str | None, reference: str | None, messages: str | None, source: str,
                 ) -> dict[str, str | None]:
    """Which column feeds the prompt and which the reference (``messages=`` feeds both)."""
    if messages is None:
        return {"prompt": prompt, "reference": reference}
    if prompt != TRL_PROMPT or reference is not None:
        raise TaskError(f"{source}: messages={messages!r} gives both the prompt and the reference; "
                        f"drop prompt={prompt!r} and reference={reference!r}")
    return {"prompt": messages, "reference": None}


@dataclass(frozen=True)
class ColumnPlan:
    """Where each column of a dataset goes: ``fields`` maps Example fields to the columns that feed them,
    ``meta`` maps meta keys (reward keywords) to columns. ``implicit``: every row's prompt is the shared
    start of chosen and rejected; ``maybe_implicit``: TRL's ``maybe_extract_prompt`` decides per row."""

    fields: dict[str, str | None]
    meta: dict[str, str]
    implicit: bool
    maybe_implicit: bool
    meta_named: tuple[str, ...] = ()

    @property
    def named(self) -> list[str]:
        """The columns the caller named (or TRL's names imply): every row must have them."""
        wanted = [c for f, c in self.fields.items() if c is not None and not (f == "prompt" and self.implicit)]
        return list(dict.fromkeys(wanted + list(self.meta_named)))

    def extracts_prompt(self, values: Mapping[str, Any]) -> bool:
        """Whether this row's prompt is extracted from its pair: always when implicit; with TRL's
        ``maybe_extract_prompt`` when a ``prompt`` column is of another form than ``chosen`` (text beside
        whole conversations, as in UltraFeedback), since it then cannot be the conversation's prompt."""
        if self.implicit or not self.maybe_implicit or values["chosen"] is None or values["rejected"] is None:
            return self.implicit
        return is_messages(values["prompt"]) != is_messages(values["chosen"])


def plan_columns(columns: Sequence[str], source: str, *, prompt: str | None = TRL_PROMPT,
                 reference: str | None = None, chosen: str | None = None, rejected: str | None = None,
                 meta: Sequence[str] | Mapping[str, str] | None = None, messages: str | None = None) -> ColumnPlan:
    """Decide where every column goes (the rules are in the module doc); a bad mapping is a TaskError."""
    fields = {**_text_fields(prompt, reference, messages, source), "chosen": chosen, "rejected": rejected}
    pair = chosen is not None and rejected is not None
    if prompt is None and not pair:
        raise TaskError(f"{source}: prompt=None takes the prompt from the shared start of chosen and rejected; "
                        f"name both columns (got chosen={chosen!r}, rejected={rejected!r})")
    for name in ("chosen", "rejected"):
        if messages is None and prompt is not None and prompt == fields[name]:
            raise TaskError(f"{source}: prompt={prompt!r} is also the {name} column; when chosen and rejected hold "
                            "whole conversations (or texts) that share their prompt, pass prompt=None, or leave "
                            "the default with no 'prompt' column, and the shared prompt is extracted as TRL does")
    trl_names = prompt == TRL_PROMPT and messages is None and pair
    implicit = prompt is None or (trl_names and TRL_PROMPT not in columns)
    explicit = _meta_map(meta)
    taken = {c for c in fields.values() if c is not None}
    metas = dict(explicit)
    for column in columns:
        if column in taken or column in explicit.values():
            continue
        if column in metas:
            raise TaskError(f"{source}: meta key {column!r} (column {metas[column]!r}) is also the name of another "
                            "column, which reaches the reward under its own name; pick another meta key")
        metas[column] = column
    clash = sorted(RESERVED_META & set(metas))
    if clash:
        key = clash[0]
        raise TaskError(f"{source}: column {metas[key]!r} would reach the reward as {key!r}, the name of one of "
                        f"the reward's own arguments; rename it with meta={{'<new name>': {metas[key]!r}}}")
    return ColumnPlan(fields, metas, implicit, trl_names and not implicit, tuple(explicit.values()))


def _check_answer(value: Any, where: str) -> Text:
    """A chosen or rejected answer; a conversation with other turns than the assistant's gets a hint."""
    if is_messages(value) and any(m["role"] != "assistant" for m in value):
        role = next(m["role"] for m in value if m["role"] != "assistant")
        raise TaskError(f"{where} holds a {role!r} message; an answer holds assistant messages only (if chosen and "
                        "rejected hold whole conversations that share their prompt, pass prompt=None to extract it)")
    return check_text(value, where, answer=True)


def _row_texts(values: dict[str, Any], fields: Mapping[str, str | None], messages: str | None,
               where: str) -> dict[str, Any]:
    """A row's checked prompt/reference/chosen/rejected; the messages column is split in two."""
    out = {}
    for f, v in values.items():
        if v is None:
            if f == "prompt":
                raise TaskError(f"{where} has no prompt (column {fields[f]!r} is null)")
            out[f] = None
        elif f in ("chosen", "rejected"):
            out[f] = _check_answer(v, f"{where}, column {fields[f]!r}")
        else:
            out[f] = check_text(v, f"{where}, column {fields[f]!r}", answer=f != "prompt")
    if messages is not None:
        out["prompt"], out["reference"] = split_conversation(out["prompt"], f"{where}, column {messages!r}")
    return out


def extract_prompt(chosen: Text, rejected: Text, where: str = "extract_prompt") -> tuple[Text, Text, Text]:
    """``(prompt, chosen, rejected)`` from a pair that holds its prompt, as TRL's ``extract_prompt`` does.

    The prompt is the longest common start: whole messages for conversations, characters for text, where a
    space just before the first difference goes to the answers ("The sky is" + " blue." / " green."), so a
    text prompt can end inside a word when the answers start alike. Errors TRL lets through are refused,
    naming ``where``: no shared start, identical answers, one answer the start of the other (nothing left
    of it), a text beside a conversation.
    """
    kinds = ["a conversation" if is_messages(x) else "text" for x in (chosen, rejected)]
    if kinds[0] != kinds[1]:
        raise TaskError(f"{where}: chosen is {kinds[0]} but rejected is {kinds[1]}; the shared prompt can only "
                        "be extracted from two texts or two conversations")
    unit = "message" if kinds[0] == "a conversation" else "character"
    if chosen == rejected:
        raise TaskError(f"{where}: chosen and rejected are identical, so there is no answer to prefer and no "
                        "prompt to extract")
    shortest = min(len(chosen), len(rejected))
    cut = next((i for i in range(shortest) if chosen[i] != rejected[i]), shortest)
    if cut == shortest:
        short, long = ("chosen", "rejected") if len(chosen) < len(rejected) else ("rejected", "chosen")
        raise TaskError(f"{where}: {short} is the start of {long}; once the shared prompt is taken nothing is "
                        f"left of the {short} answer")
    if isinstance(chosen, str) and cut > 0 and chosen[cut - 1] == " ":
        cut -= 1  # TRL: the space before the answers belongs to them
    prompt = chosen[:cut]
    if not prompt or (isinstance(prompt, str) and not prompt.strip()):
        raise TaskError(f"{where}: chosen and rejected share no prompt (they differ from the first {unit}); "
                        "an implicit prompt is their shared start")
    return prompt, chosen[cut:], rejected[cut:]


def _implicit_row(values: dict[str, Any], fields: Mapping[str, str | None], where: str) -> dict[str, Any]:
    """A row whose prompt is the shared start of its chosen and rejected columns."""
    texts = {}
    for f in ("chosen", "rejected"):
        if values[f] is None:
            raise TaskError(f"{where}: column {fields[f]!r} is null; the prompt is taken from chosen and rejected")
        texts[f] = check_text(values[f], f"{where}, column {fields[f]!r}")
    prompt, chosen, rejected = extract_prompt(texts["chosen"], texts["rejected"],
                                              f"{where} (columns {fields['chosen']!r}, {fields['rejected']!r})")
    rest = f"after the shared prompt of {len(prompt)} {'messages' if is_messages(prompt) else 'characters'}"
    answers = {"chosen": _check_answer(chosen, f"{where}, column {fields['chosen']!r} ({rest})"),
               "rejected": _check_answer(rejected, f"{where}, column {fields['rejected']!r} ({rest})")}
    if fields["reference"] is None or values["reference"] is None:
        reference = None
    elif fields["reference"] in (fields["chosen"], fields["rejected"]):  # the answer part of that column
        reference = answers["chosen" if fields["reference"] == fields["chosen"] else "rejected"]
    else:
        reference = check_text(values["reference"], f"{where}, column {fields['reference']!r}", answer=True)
    return {"prompt": check_text(prompt, f"{where}, the shared prompt"), "reference": reference, **answers}


def examples_from_columns(columns: Mapping[str, Sequence[Any]], source: str, *, prompt: str | None = TRL_PROMPT,
                          reference: str | None = None, chosen: str | None = None, rejected: str | None = None,
                          meta: Sequence[str] | Mapping[str, str] | None = None,
                          messages: str | None = None) -> list[Example]:
    """Examples from a column table (``{name: values}``) with the column rules of the module doc."""
    check_options(source, {"prompt": prompt, "reference": reference, "chosen": chosen, "rejected": rejected,
                           "meta": meta, "messages": messages})
    plan = plan_columns(list(columns), source, prompt=prompt, reference=reference, chosen=chosen,
                        rejected=rejected, meta=meta, messages=messages)
    missing = [c for c in plan.named if c not in columns]
    if missing:
        raise TaskError(f"{source}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}; columns: {sorted(columns)}")
    n = len(next(iter(columns.values()))) if columns else 0
    if n == 0:
        raise TaskError(f"{source}: the dataset is empty (no rows)")
    fields = plan.fields
    out = []
    for i in range(n):
        where = f"{source}: row {i}"
        values = {f: None if c is None or (f == "prompt" and plan.implicit) else columns[c][i]
                  for f, c in fields.items()}
        row_meta = {k: columns[c][i] for k, c in plan.meta.items()}
        if plan.extracts_prompt(values):
            if not plan.implicit:  # the prompt column is not the prompt here: it still reaches the reward
                row_meta.setdefault(TRL_PROMPT, values["prompt"])
            texts = _implicit_row(values, fields, where)
        else:
            texts = _row_texts(values, fields, messages, where)
        out.append(Example(**texts, meta=row_meta))
    return out


def examples_from_records(records: Sequence[Mapping[str, Any]], source: str, **mapping: Any) -> list[Example]:
    """Examples from row dicts (JSON lines). Every named column must be in every row (else an error naming the
    row); another column missing from some rows is None there, as ``datasets`` reads such a file."""
    check_options(source, mapping)
    if not records:
        raise TaskError(f"{source}: the dataset is empty (no rows)")
    present = list(dict.fromkeys(c for row in records for c in row))
    named = plan_columns(present, source, **mapping).named
    for i, row in enumerate(records):
        absent = [c for c in named if c not in row]
        if absent:
            raise TaskError(f"{source}: row {i} is missing column{'s' if len(absent) > 1 else ''} "
                            f"{', '.join(map(repr, absent))}; it has: {sorted(row)}")
    columns = {c: [row.get(c) for row in records] for c in present}
    return examples_from_columns(columns, source, **mapping)


def _lines(f: Any, path: Path) -> Iterable[bytes]:
    """The file's lines as bytes; a ``.gz`` file that is not gzip is a TaskError naming it."""
    try:
        yield from f
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise TaskError(f"{str(path)!r}: not a valid gzip file ({err}); is it really compressed?") from err


def check_limit(limit: int | None, source: Any) -> None:
    """``limit`` keeps the first rows: None (all) or an integer >= 0; a negative one would drop from the end."""
    check_options(repr(str(source)), {"limit": limit})


def _meta_strings(meta: Any) -> list[Any] | None:
    """The names a ``meta=`` option is made of (keys and columns), or None when it has no valid shape."""
    if meta is None or isinstance(meta, str):
        return [] if meta is None else [meta]
    if isinstance(meta, Mapping):
        return [*meta.keys(), *meta.values()]
    return list(meta) if isinstance(meta, list | tuple) else None


def _option_problem(key: str, value: Any, flags: Sequence[str]) -> str | None:
    """What is wrong with one loader option (None if nothing); see ``check_options`` for the rules."""
    if key in flags:
        return None if isinstance(value, bool) else "must be True or False"
    if key == "limit":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        return None if ok else "must be None or an integer >= 0"
    if key == "path":
        return None if isinstance(value, str | PathLike) else "must be a path (str or pathlib.Path)"
    if key == "meta":
        names = _meta_strings(value)
        ok = names is not None and all(isinstance(n, str) for n in names)
        return None if ok else ("must be None, a column name, a list of column names or a {meta key: column} "
                                "dict of strings")
    if key == "split":
        return None if isinstance(value, str) and value else "must be a non-empty string"
    if key == "prompt":  # None: the prompt is the shared start of chosen and rejected (implicit prompt)
        return None if value is None or (isinstance(value, str) and value) else "must be a non-empty string or None"
    return None if value is None or isinstance(value, str) else "must be a string or None"


def check_options(where: str, options: Mapping[str, Any], *, flags: Sequence[str] = ()) -> None:
    """A loader's options, checked before anything is read: a wrong one is a TaskError naming ``where`` (the
    source) and the option, instead of a raw TypeError deep in the loader or a silently empty column.

    ``split`` is a non-empty string, ``prompt`` one or None (an implicit prompt); ``path`` a str or ``Path``;
    ``limit`` None or an integer >= 0; ``meta`` None, a column name, a list of them or a {meta key: column}
    dict of strings; the options
    named in ``flags`` True or False; every other one (optional column names, ``messages``, ``data_dir``,
    ``subset``) a string or None.
    """
    for key, value in options.items():
        problem = _option_problem(key, value, flags)
        if problem is not None:
            raise TaskError(f"{where}: {key} {problem}, got {value!r}")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz`` file; a bad line is reported with its number."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{str(path)!r}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(_lines(f, path), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise TaskError(f"{str(path)!r}, line {lineno}: not UTF-8 text ({err})") from err
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(f"{str(path)!r}, line {lineno}: invalid JSON: {err}") from err
            if not isinstance(row, dict):
                raise TaskError(f"{str(path)!r}, line {lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    if not rows:
        raise TaskError(f"{str(path)!r}: the file is empty (no JSON lines)")
    return rows


def load_jsonl(path: str | Path, *, prompt: str | None = TRL_PROMPT, reference: str | None = None,
               chosen: str | None = None, rejected: str | None = None,
               meta: Sequence[str] | Mapping[str, str] | None = None, limit: int | None = None,
               messages: str | None = None) -> list[Example]:
    """Examples from a JSON-lines file (``.gz`` too), with the column mapping described in the module doc."""
    check_options(repr(str(path)), {"path": path, "prompt": prompt, "reference": reference, "chosen": chosen,
                                    "rejected": rejected, "meta": meta, "limit": limit, "messages": messages})
    rows = read_jsonl(path)[:limit]
    return examples_from_records(rows, repr(str(path)), prompt=prompt, reference=reference, chosen=chosen,
                                 rejected=rejected, meta=meta, messages=messages)


def hf_dataset(source: Any, split: str = "train", *, data_dir: str | None = None, **load_kw: Any) -> Any:
    """A ``datasets.Dataset`` from a Dataset/DatasetDict, a local path, or a hub name (needs a network).

    A directory saved with ``save_to_disk`` is loaded with ``load_from_disk``; another directory or a
    data file (.json/.jsonl/.csv/.parquet, optionally compressed) with ``load_dataset``.
    """
    import datasets

    name = repr(str(source))
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise TaskError(f"dataset has no split {split!r}; splits: {sorted(source)}")
        return source[split]
    if isinstance(source, datasets.Dataset):
        return source
    if not isinstance(source, str | Path):
        raise TaskError(f"load_hf: expected a datasets.Dataset, a path or a hub name, got {type(source).__name__}")
    path = Path(source)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            return hf_dataset(datasets.load_from_disk(str(path)), split)
        if path.is_dir():
            return datasets.load_dataset(str(path), data_dir=data_dir, split=split, **load_kw)
        if path.is_file():
            suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
            kind = HF_FILE_TYPES.get(suffixes[-1] if suffixes else "")
            if kind is None:
                raise TaskError(f"{name}: unknown data file type; expected one of {sorted(HF_FILE_TYPES)}")
            return datasets.load_dataset(kind, data_files=str(path), split="train", **load_kw)
    except TaskError:
        raise
    except Exception as err:
        raise TaskError(f"{name}: could not load the local dataset: {type(err).__name__}: {err}") from err
    if str(source).startswith((".", "/", "~")) or path.suffix:
        raise TaskError(f"{name}: no such file or directory")
    try:
        return datasets.load_dataset(str(source), data_dir=data_dir, split=split, **load_kw)
    except Exception as err:
        raise TaskError(f"{name}: could not load from the Hugging Face hub (split={split!r}, "
                        f"data_dir={data_dir!r}); a hub name needs a network, or pass a local path: "
                        f"{type(err).__name__}: {err}") from err


def load_hf(source: Any, split: str = "train", *, prompt: str | None = TRL_PROMPT, reference: str | None = None,
            chosen: str | None = None, rejected: str | None = None,
            meta: Sequence[str] | Mapping[str, str] | None = None, data_dir: str | None = None,
            limit: int | None = None, messages: str | None = None, **load_kw: Any) -> list[Example]:
    """Examples from a Hugging Face dataset (object, local path or hub name) with a column mapping."""
    check_options(repr(str(source)) if isinstance(source, str | Path) else "load_hf(dataset)",
                  {"split": split, "prompt": prompt, "reference": reference, "chosen": chosen, "rejected": rejected,
                   "meta": meta, "data_dir": data_dir, "limit": limit, "messages": messages})
    ds = hf_dataset(source, split, data_dir=data_dir, **load_kw)
    name = repr(str(source)) if isinstance(source, str | Path) else f"dataset (split {split!r})"
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    mapping = {"prompt": prompt, "reference": reference, "chosen": chosen, "rejected": rejected, "meta": meta,
               "messages": messages}
    missing = [c for c in plan_columns(ds.column_names, name, **mapping).named if c not in ds.column_names]
    if missing:  # before any column is read
        raise TaskError(f"{name}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}; columns: {sorted(ds.column_names)}")
    columns = {c: list(ds[c]) for c in ds.column_names}
    return examples_from_columns(columns, name, prompt=prompt, reference=reference, chosen=chosen,
                                 rejected=rejected, meta=meta, messages=messages)


def parse_hh(text: str) -> tuple[str, str]:
    """``(prompt, answer)`` of one HH-RLHF dialogue: the split is at the last "\\n\\nAssistant:"."""
    if not isinstance(text, str):
        raise TaskError(f"HH-RLHF: expected a dialogue string, got {type(text).__name__}")
    cut = text.rfind(ASSISTANT)
    if cut < 0 or HUMAN not in text[:cut]:
        raise TaskError(f"HH-RLHF: not in HH format (needs '\\n\\nHuman:' then '\\n\\nAssistant:'): {text[:80]!r}")
    cut += len(ASSISTANT)
    return text[:cut], text[cut:]


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """The turns of an HH prompt (as cut by ``parse_hh``) as user/assistant messages, text stripped."""
    head, *turns = re.split(r"\n\n(Human|Assistant):", prompt)
    if head.strip() or not turns or turns[0] != "Human":
        raise TaskError(f"HH-RLHF: the dialogue must start with '\\n\\nHuman:': {prompt[:80]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [{"role": roles[who], "content": text.strip()}
                for who, text in zip(turns[::2], turns[1::2], strict=True)]
    return messages[:-1]   # the last one is the empty "Assistant:" cue that the answer follows


def hh_examples(pairs: Iterable[tuple[str, str]], source: str,
                meta: Mapping[str, Any] | None = None, messages: bool = False) -> list[Example]:
    """Examples from (chosen, rejected) dialogues; reference = chosen answer, as in the GRAO paper.

    Rows that do not parse, or whose chosen and rejected prompts differ (a few in the real data), are
    skipped with a warning; no usable row at all is an error. ``messages=True``: see the module doc.
    """
    out, bad = [], 0
    for chosen_text, rejected_text in pairs:
        try:
            prompt, chosen = parse_hh(chosen_text)
            other, rejected = parse_hh(rejected_text)
            if other != prompt:
                raise TaskError("the chosen and rejected prompts differ")
            if messages:
                prompt, chosen, rejected = (hh_messages(prompt), *([{"role": "assistant", "content": a.strip()}]
                                                                    for a in (chosen, rejected)))
        except TaskError:
            bad += 1
            continue
        out.append(Example(prompt=prompt, reference=chosen, chosen=chosen, rejected=rejected, meta=dict(meta or {})))
    if not out:
        raise TaskError(f"{source}: no usable HH-RLHF pairs ({bad} rows skipped as malformed or mismatched)")
    if bad:
        warnings.warn(f"{source}: skipped {bad} HH-RLHF rows (malformed, or chosen/rejected prompts differ)",
                      stacklevel=2)
    return out


def subset_label(name: str, default: str = "hh") -> str:
    """"helpful-base" -> "helpful", "harmless-base/train.jsonl.gz" -> "harmless", else ``default``."""
    lowered = name.lower()
    return next((s for s in ("harmless", "helpful") if s in lowered), default)


def load_hh(source: Any, split: str = "train", *, subset: str | None = None, data_dir: str | None = None,
            limit: int | None = None, messages: bool = False) -> list[Example]:
    """HH-RLHF pairs from a ``.jsonl``/``.jsonl.gz`` file, a local clone of the hub repo (directory with
    ``<data_dir>/<split>.jsonl.gz``), a ``datasets.Dataset``, or a hub name such as "Anthropic/hh-rlhf".

    Each example's ``meta["subset"]`` is ``subset``, or else read from ``data_dir`` / the file path.
    ``messages=True`` gives message lists for chat models (one message per turn) instead of HH text.
    """
    check_options(repr(str(source)) if isinstance(source, str | Path) else "load_hh(dataset)",
                  {"split": split, "subset": subset, "data_dir": data_dir, "limit": limit, "messages": messages},
                  flags=("messages",))
    where = " ".join(str(x) for x in (data_dir, source if isinstance(source, str | Path) else None) if x)
    label = subset or subset_label(where, default=data_dir or "hh")
    path = Path(source) if isinstance(source, str | Path) else None
    if path is not None and path.is_dir() and not (path / "state.json").is_file():
        folder = path / data_dir if data_dir else path
        files = [folder / f"{split}{ext}" for ext in (".jsonl.gz", ".jsonl")]
        found = next((f for f in files if f.is_file()), None)
        if found is None:
            raise TaskError(f"{str(path)!r}: no {split}.jsonl.gz or {split}.jsonl in {str(folder)!r}")
        path = found
        label = subset or subset_label(str(found), default=data_dir or "hh")
    if path is not None and path.is_file() and ".jsonl" in path.suffixes:
        rows = read_jsonl(path)[:limit]
        source_name = repr(str(path))
        for i, row in enumerate(rows):
            absent = [c for c in ("chosen", "rejected") if c not in row]
            if absent:
                raise TaskError(f"{source_name}: row {i} is missing column{'s' if len(absent) > 1 else ''} "
                                f"{', '.join(map(repr, absent))}; it has: {sorted(row)}")
        pairs: Iterable[tuple[str, str]] = [(r["chosen"], r["rejected"]) for r in rows]
    else:
        ds = hf_dataset(source, split, data_dir=data_dir)
        source_name = repr(str(source)) if isinstance(source, str | Path) else "HH dataset"
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        missing = [c for c in ("chosen", "rejected") if c not in ds.column_names]
        if missing:
            raise TaskError(f"{source_name}: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(repr, missing))}; columns: {sorted(ds.column_names)}")
        if len(ds) == 0:
            raise TaskError(f"{source_name}: the dataset is empty (no rows)")
        pairs = zip(ds["chosen"], ds["rejected"], strict=True)
    return hh_examples(pairs, source_name, {"subset": label}, messages=messages)
