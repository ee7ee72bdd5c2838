"""CLIP's byte-level BPE tokenizer.

A self-contained re-implementation of the tokenizer OpenAI ships with CLIP
(``clip/simple_tokenizer.py`` plus ``clip.tokenize``), producing the same token ids for the same
text. Its vocabulary is the merge list packaged at
``pipeline/models/data/bpe_simple_vocab_16e6.txt.gz``.

How a text becomes ids:

1. Cleaning: ``ftfy.fix_text``, HTML entities unescaped twice, outer whitespace stripped, every
   run of whitespace folded to a single space, then lower-cased.
2. Pre-tokenisation into words with the same regular expression OpenAI uses (contractions,
   letter runs, single digits, runs of other non-space characters, the two special tokens).
3. Each word's UTF-8 bytes are mapped to printable stand-in characters (the GPT-2 byte map), the
   word's last symbol gets a ``</w>`` suffix, and the ranked merges are applied greedily.

Ids: 0-255 are single bytes, 256-511 the same bytes ending a word, 512-49405 the merges,
49406 ``<|startoftext|>`` and 49407 ``<|endoftext|>``.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import itertools
import os
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final, cast

import ftfy
import regex

if TYPE_CHECKING:
    import torch

from pipeline.errors import TokenizerError

__all__ = ["ClipTokenizer", "get_tokenizer", "tokenize"]

_VOCAB_PACKAGE: Final = "pipeline"
_VOCAB_RESOURCE: Final = "models/data/bpe_simple_vocab_16e6.txt.gz"

#: Number of merges CLIP uses (OpenAI reads lines 1 to 49152-256-2 of the file). With the 256
#: bytes, their 256 end-of-word forms and the 2 special tokens that makes 49408 ids.
_NUM_MERGES: Final = 49152 - 256 - 2

_END_OF_WORD: Final = "</w>"
_SOT: Final = "<|startoftext|>"
_EOT: Final = "<|endoftext|>"

#: The pre-tokenisation pattern of OpenAI's CLIP tokenizer.
_WORD_PATTERN: Final = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
#: Whitespace folding uses the standard library's ``\s`` (every ``str.isspace`` character), as
#: OpenAI's does; the ``regex`` package's ``\s`` is narrower.
_WHITESPACE_RUN: Final = re.compile(r"\s+")

#: Size of each tokenizer's per-word BPE cache.
_BPE_CACHE_SIZE: Final = 1 << 16

#: How much of an over-long text an error message quotes.
_ERROR_TEXT_CHARS: Final = 60


def _byte_alphabet() -> list[tuple[int, str]]:
    """The GPT-2 byte map as (byte, stand-in character) pairs, in vocabulary order.

    Bytes that are already visible Latin-1 characters stand for themselves and come first, in
    byte order; the remaining bytes (control characters, space, soft hyphen, ...) are given the
    code points 256, 257, ... in byte order and follow.
    """
    visible = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    visible_set = set(visible)
    hidden = [b for b in range(256) if b not in visible_set]
    pairs = [(b, chr(b)) for b in visible]
    pairs.extend((b, chr(256 + n)) for n, b in enumerate(hidden))
    return pairs


def _clean(text: str) -> str:
    """Clean text as OpenAI's CLIP tokenizer does before splitting it into words."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    return text.lower()


def _read_merges(raw: bytes) -> list[tuple[str, str]]:
    """Parse the gzipped merge list: skip the header line, keep the first ``_NUM_MERGES``."""
    try:
        lines = gzip.decompress(raw).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read the BPE vocabulary: {exc}") from exc
    available = sum(1 for line in lines[1:] if line.strip())
    if available < _NUM_MERGES:
        raise TokenizerError(f"BPE vocabulary holds {available} merges; CLIP needs {_NUM_MERGES}")
    body = lines[1 : _NUM_MERGES + 1]
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(body, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise TokenizerError(
                f"BPE vocabulary line {number} is not a merge of two symbols: {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges


def _default_vocab_bytes() -> bytes:
    return importlib.resources.files(_VOCAB_PACKAGE).joinpath(_VOCAB_RESOURCE).read_bytes()


def _shorten(text: str, limit: int = _ERROR_TEXT_CHARS) -> str:
    """``repr`` of text, cut to about ``limit`` characters with an ellipsis."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit - 1]) + "…"


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer (the same ids as OpenAI's ``SimpleTokenizer``).

    ``bpe_path`` names a gzipped merge list in OpenAI's format; by default the one packaged with
    clipguard is used. Instances are safe to share between threads.
    """

    def __init__(self, bpe_path: str | os.PathLike[str] | None = None) -> None:
        if bpe_path is None:
            raw = _default_vocab_bytes()
        else:
            try:
                with open(bpe_path, "rb") as handle:
                    raw = handle.read()
            except OSError as exc:
                raise TokenizerError(f"cannot read the BPE vocabulary {bpe_path}: {exc}") from exc
        merges = _read_merges(raw)

        alphabet = _byte_alphabet()
        self._byte_to_char: dict[int, str] = dict(alphabet)
        self._char_to_byte: dict[str, int] = {char: byte for byte, char in alphabet}

        tokens = [char for _, char in alphabet]
        tokens += [char + _END_OF_WORD for _, char in alphabet]
        tokens += [first + second for first, second in merges]
        tokens += [_SOT, _EOT]
        self._token_to_id: dict[str, int] = {token: i for i, token in enumerate(tokens)}
        if len(self._token_to_id) != len(tokens):
            raise TokenizerError("BPE vocabulary produces duplicate tokens")
        self._id_to_token: list[str] = tokens
        self._merge_rank: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self._specials: dict[str, int] = {
            _SOT: self._token_to_id[_SOT],
            _EOT: self._token_to_id[_EOT],
        }
        self._bpe_word = functools.lru_cache(maxsize=_BPE_CACHE_SIZE)(self._bpe_uncached)

    @property
    def sot_token(self) -> int:
        """Id of ``<|startoftext|>`` (49406)."""
        return self._specials[_SOT]

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>`` (49407)."""
        return self._specials[_EOT]

    @property
    def vocab_size(self) -> int:
        """Number of token ids (49408)."""
        return len(self._id_to_token)

    def _bpe_uncached(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-tokenised word (cleaned text, not yet byte-mapped)."""
        special = self._specials.get(word)
        if special is not None:
            return (special,)
        to_char = self._byte_to_char
        symbols = [to_char[b] for b in word.encode("utf-8")]
        symbols[-1] += _END_OF_WORD
        ranks = self._merge_rank
        while len(symbols) > 1:
            best_rank = -1
            best_pair: tuple[str, str] | None = None
            for pair in itertools.pairwise(symbols):
                rank = ranks.get(pair)
                if rank is not None and (best_pair is None or rank < best_rank):
                    best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            first, second = best_pair
            merged: list[str] = []
            i = 0
            last = len(symbols) - 1
            while i <= last:
                if i < last and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        lookup = self._token_to_id
        return tuple(lookup[symbol] for symbol in symbols)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without the start and end tokens."""
        bpe_word = self._bpe_word
        ids: list[int] = []
        for word in _WORD_PATTERN.findall(_clean(text)):
            ids.extend(bpe_word(word))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of token ids, as OpenAI decodes it.

        Every ``</w>`` becomes a space, so text normally ends with one; special tokens and any
        padding zeros (``"!"``) are decoded literally, and invalid UTF-8 becomes U+FFFD.
        """
        if hasattr(ids, "reshape"):  # a tensor
            ids = cast(list[int], cast("torch.Tensor", ids).reshape(-1).tolist())
        size = len(self._id_to_token)
        pieces: list[str] = []
        for token_id in ids:
            index = int(token_id)
            if not 0 <= index < size:
                raise TokenizerError(f"token id {index} is outside the vocabulary (0-{size - 1})")
            pieces.append(self._id_to_token[index])
        to_byte = self._char_to_byte
        data = bytes(to_byte[char] for char in "".join(pieces))
        return data.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")


@functools.cache
def get_tokenizer() -> ClipTokenizer:
    """The shared tokenizer built from the packaged vocabulary (built once, on first use)."""
    return ClipTokenizer()


def tokenize(
    texts: str | Sequence[str], context_length: int = 77, truncate: bool = False
) -> torch.LongTensor:
    """Tokenize texts for CLIP's text encoder, as ``clip.tokenize`` does.

    Returns an int64 tensor of shape ``[len(texts), context_length]``; row ``i`` is
    ``[sot] + encode(texts[i]) + [eot]`` followed by zeros. A bare string counts as one text.

    A text whose tokens (with start and end) exceed ``context_length`` raises
    :class:`~pipeline.errors.TokenizerError`, unless ``truncate`` is true: then it is cut to
    ``context_length`` tokens and the last one is replaced by the end token.
    """
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise TokenizerError(f"context_length must be an int, not {type(context_length).__name__}")
    if context_length < 1:
        raise TokenizerError(f"context_length must be at least 1, not {context_length}")
    tokenizer = get_tokenizer()
    sot, eot = tokenizer.sot_token, tokenizer.eot_token
    rows: list[list[int]] = []
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TokenizerError(f"texts[{row}] is a {type(text).__name__}, not a str")
        tokens = [sot, *tokenizer.encode(text), eot]
        if len(tokens) > context_length:
            if not truncate:
                raise TokenizerError(
                    f"text {_shorten(text)} is {len(tokens)} tokens long (with start and end "
                    f"tokens), more than the context length of {context_length}; shorten it "
                    "or pass truncate=True"
                )
            tokens = tokens[:context_length]
            tokens[-1] = eot
        tokens.extend([0] * (context_length - len(tokens)))
        rows.append(tokens)
    import torch  # only here: counting and encoding text needs no torch

    if rows:
        result = torch.tensor(rows, dtype=torch.long)
    else:
        result = torch.zeros((0, context_length), dtype=torch.long)
    return cast(torch.LongTensor, result)
