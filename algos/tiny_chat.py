"""A tiny chat model shaped like Qwen2.5-Instruct, built offline in seconds, for tests of real-model code paths.

Real chat models differ from the project's byte-level base models in ways code must handle: a BPE
tokenizer with special tokens, a ChatML chat template that adds a default system message, no BOS
token, a pad token distinct from the end-of-turn token, and a generation config with *two* EOS ids
(``<|im_end|>`` and ``<|endoftext|>``) plus sampling defaults. ``build_tiny_chat_model`` builds one
such model with random weights (a few hundred thousand parameters) and saves it like a hub checkpoint,
so ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained(path)`` load it. It is cached under
``$GRAO_CACHE/tiny-chat`` by a hash of its arguments and written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from algos.tiny import cache_root, check_marker, save_atomically

# Bump when a change here alters the files built for the same arguments.
CODE_VERSION = "1"
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Qwen2.5's template, simplified (no tools): a default system message when the conversation has none.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "You are a helpful assistant.",
    "What is the capital of France? The capital of France is Paris.",
    "How do I boil an egg? Put the egg in boiling water for about eight minutes.",
    "Can you recommend a book? Try a mystery novel, such as The Hound of the Baskervilles.",
    "What is two plus two? Two plus two is four.",
    "Please write a short poem about the sea. The sea is wide, the waves roll in and out.",
    "How can I keep cut flowers fresh? Trim the stems and change the water every two days.",
    "I cannot help with that request, but I can suggest a safer alternative.",
    "Thank you! You are welcome. Is there anything else I can help you with?",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ? !",
    "Sure, here is a step by step answer: first, second, third, and finally the result.",
]


def _tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``CORPUS``, with Qwen's special tokens and ChatML template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT,
                                   chat_template=CHAT_TEMPLATE, model_max_length=512)


def _model(vocab: int, eos_id: int, pad_id: int, hidden_size: int, num_layers: int, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=3 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id)
    model = Qwen2ForCausalLM(config)
    # Qwen2.5-Instruct's generation defaults: two EOS ids and sampling settings a caller must override or honour.
    model.generation_config = GenerationConfig(bos_token_id=pad_id, pad_token_id=pad_id, eos_token_id=[eos_id, pad_id],
                                               do_sample=True, temperature=0.7, top_p=0.8, top_k=20,
                                               repetition_penalty=1.05)
    return model.eval()


def build_tiny_chat_model(cache_dir: str | Path | None = None, *, vocab_size: int = 512, hidden_size: int = 64,
                          num_layers: int = 2, seed: int = 0) -> Path:
    """The directory of a random tiny Qwen2 chat model (see the module doc), building it only if not cached.

    ``cache_dir`` defaults to ``$GRAO_CACHE`` (``~/.cache/grao-lab``); the model lives in
    ``<cache_dir>/tiny-chat/qwen2-<hash of the arguments>``.
    """
    args = {"vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers, "seed": seed,
            "code": CODE_VERSION}
    if vocab_size < 300 or hidden_size % 4 or hidden_size < 8 or num_layers < 1:
        raise ValueError(f"build_tiny_chat_model: need vocab_size >= 300 (259 bytes and special tokens), "
                         f"hidden_size a multiple of 4 (>= 8) and num_layers >= 1, got {args}")
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    path = root / "tiny-chat" / f"qwen2-{key}"
    if (path / "tiny_chat.json").exists():
        check_marker(path / "tiny_chat.json", args)
        return path
    tokenizer = _tokenizer(vocab_size)
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([IM_END, ENDOFTEXT])
    model = _model(len(tokenizer), eos_id, pad_id, hidden_size, num_layers, seed)
    save_atomically(path, "tiny_chat.json", args, [model, tokenizer])  # safetensors, configs, tokenizer
    return path
