"""Tiny offline text models: a byte-level tokenizer that needs no training and no download.

It lives in the lowest layer because the learned rewards here need it, and the tiny base policies
in ``algos`` and the token-level environments in ``textenv`` reuse it. For ASCII text it is a
character-level tokenizer; any other text still round-trips through its UTF-8 bytes.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


@lru_cache(maxsize=1)
def _byte_tokenizer_json() -> str:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {PAD: 0, BOS: 1, EOS: 2}
    vocab.update({ch: i + 3 for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([PAD, BOS, EOS])
    return tok.to_str()


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh 259-token byte-level tokenizer (pad=0, bos=1, eos=2), identical on every machine."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_byte_tokenizer_json()),
        pad_token=PAD, bos_token=BOS, eos_token=EOS,
    )
    tok.padding_side = "left"
    return tok
