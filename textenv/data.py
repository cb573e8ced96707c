"""Loaders that turn datasets into ``Example`` lists: JSONL, Hugging Face ``datasets``, Anthropic HH-RLHF.

Column mapping: ``prompt=`` names the prompt column (required); ``reference=``, ``chosen=`` and
``rejected=`` name optional columns (``None``: the field stays empty); ``meta=`` lists columns (or maps
meta keys to columns) that travel in ``Example.meta`` and so reach the reward as keyword columns.
A named column that is missing, or a dataset with no rows, raises ``TaskError`` naming it.

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
from os import PathLike
from pathlib import Path
from typing import Any

from textenv.task import Example, TaskError, check_text, split_conversation

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
HF_FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def _meta_map(meta: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    if meta is None:
        return {}
    if isinstance(meta, str):
        return {meta: meta}
    return dict(meta) if isinstance(meta, Mapping) else {c: c for c in meta}


def _text_fields(prompt: str, reference: str | None, messages: str | None) -> dict[str, str | None]:
    """Which column feeds the prompt and which the reference (``messages=`` feeds both)."""
    if messages is None:
        return {"prompt": prompt, "reference": reference}
    if prompt != "prompt" or reference is not None:
        raise TaskError(f"messages={messages!r} gives both the prompt and the reference; "
                        f"drop prompt={prompt!r} and reference={reference!r}")
    return {"prompt": messages, "reference": None}


def _row_texts(values: dict[str, Any], fields: Mapping[str, str | None], messages: str | None,
               where: str) -> dict[str, Any]:
    """A row's checked prompt/reference/chosen/rejected; the messages column is split in two."""
    out = {}
    for f, v in values.items():
        if v is None:
            if f == "prompt":
                raise TaskError(f"{where} has no prompt (column {fields[f]!r} is null)")
            out[f] = None
        else:
            out[f] = check_text(v, f"{where}, column {fields[f]!r}", answer=f != "prompt")
    if messages is not None:
        out["prompt"], out["reference"] = split_conversation(out["prompt"], f"{where}, column {messages!r}")
    return out


def examples_from_columns(columns: Mapping[str, Sequence[Any]], source: str, *, prompt: str = "prompt",
                          reference: str | None = None, chosen: str | None = None, rejected: str | None = None,
                          meta: Sequence[str] | Mapping[str, str] | None = None,
                          messages: str | None = None) -> list[Example]:
    """Examples from a column table (``{name: values}``); every named column must be present."""
    check_options(source, {"prompt": prompt, "reference": reference, "chosen": chosen, "rejected": rejected,
                           "meta": meta, "messages": messages})
    fields = {**_text_fields(prompt, reference, messages), "chosen": chosen, "rejected": rejected}
    metas = _meta_map(meta)
    wanted = [c for c in fields.values() if c is not None] + list(metas.values())
    missing = [c for c in dict.fromkeys(wanted) if c not in columns]
    if missing:
        raise TaskError(f"{source}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}; columns: {sorted(columns)}")
    n = len(columns[fields["prompt"]])
    if n == 0:
        raise TaskError(f"{source}: the dataset is empty (no rows)")
    out = []
    for i in range(n):
        values = {f: None if c is None else columns[c][i] for f, c in fields.items()}
        texts = _row_texts(values, fields, messages, f"{source}: row {i}")
        out.append(Example(**texts, meta={k: columns[c][i] for k, c in metas.items()}))
    return out


def examples_from_records(records: Sequence[Mapping[str, Any]], source: str, **mapping: Any) -> list[Example]:
    """Examples from row dicts (JSON lines); a column missing from any row is reported with the row."""
    check_options(source, mapping)
    if not records:
        raise TaskError(f"{source}: the dataset is empty (no rows)")
    names = [c for k, c in mapping.items() if k not in ("meta", "prompt") and c is not None]
    names += list(_meta_map(mapping.get("meta")).values())
    if mapping.get("messages") is None:
        names.append(mapping.get("prompt", "prompt"))
    for i, row in enumerate(records):
        absent = [c for c in dict.fromkeys(names) if c not in row]
        if absent:
            raise TaskError(f"{source}: row {i} is missing column{'s' if len(absent) > 1 else ''} "
                            f"{', '.join(map(repr, absent))}; it has: {sorted(row)}")
    columns = {c: [row[c] for row in records] for c in dict.fromkeys(names)}
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
    if key in ("prompt", "split"):
        return None if isinstance(value, str) and value else "must be a non-empty string"
    return None if value is None or isinstance(value, str) else "must be a string or None"


def check_options(where: str, options: Mapping[str, Any], *, flags: Sequence[str] = ()) -> None:
    """A loader's options, checked before anything is read: a wrong one is a TaskError naming ``where`` (the
    source) and the option, instead of a raw TypeError deep in the loader or a silently empty column.

    ``prompt`` and ``split`` are non-empty strings; ``path`` a str or ``Path``; ``limit`` None or an integer
    >= 0; ``meta`` None, a column name, a list of them or a {meta key: column} dict of strings; the options
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


def load_jsonl(path: str | Path, *, prompt: str = "prompt", reference: str | None = None,
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


def load_hf(source: Any, split: str = "train", *, prompt: str = "prompt", reference: str | None = None,
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
    texts = _text_fields(prompt, reference, messages)
    names = [c for c in (*texts.values(), chosen, rejected) if c is not None] + list(_meta_map(meta).values())
    missing = [c for c in dict.fromkeys(names) if c not in ds.column_names]
    if missing:
        raise TaskError(f"{name}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}; columns: {sorted(ds.column_names)}")
    columns = {c: ds[c] for c in dict.fromkeys(names)}
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
