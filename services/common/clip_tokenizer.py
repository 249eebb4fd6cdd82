"""OpenAI CLIP's tokenizer, built from the BPE file that open-clip-torch ships: the real
Stable Diffusion 1.x tokenizer without a model hub. Used by the tiny test pipeline and by the
world SD the trainer trains, so both read prompts exactly as SD 1.5 does.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
# CLIP keeps the first 49152 - 256 - 2 merges of its BPE file: with the 512 byte symbols
# (plain and word-final) and the two specials that makes the 49408-token vocabulary.
_CLIP_MERGES = 49152 - 256 - 2


def clip_bpe_path() -> Path:
    """CLIP's BPE merges file as open-clip-torch ships it.

    Found through the import system without importing ``open_clip``, which would pull in
    torch, timm and friends just to name a file.
    """
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / CLIP_BPE_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{CLIP_BPE_FILE} not found: the open-clip-torch package (generator extra) is missing"
    )


@lru_cache(maxsize=1)
def _byte_symbols() -> tuple[str, ...]:
    """GPT-2/CLIP's reversible byte -> printable character table, in CLIP's vocabulary order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return tuple(chr(code) for code in codes)


def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (token -> id) and merge list, derived from its BPE file exactly as
    OpenAI's ``SimpleTokenizer`` does."""
    lines = gzip.decompress(bpe_path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : _CLIP_MERGES + 1]  # line 0 is the "#version" header
    symbols = _byte_symbols()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols)]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += [CLIP_BOS, CLIP_EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_path} gives {len(vocab)} tokens, not CLIP's {CLIP_VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer(folder: Path, bpe_path: Path) -> Any:
    """vocab.json + merges.txt as in SD 1.5's tokenizer folder, then the fast tokenizer's files."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(bpe_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    # Without model_max_length the tokenizer reports "unlimited" and the pipeline would pad
    # prompts to 10**30 tokens; SD's text encoder has exactly 77 positions.
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=CLIP_MAX_LENGTH)
    tokenizer.save_pretrained(str(folder))
    return tokenizer
