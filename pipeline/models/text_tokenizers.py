"""Text tokenizers behind ``model.tokenize(texts)``: CLIP's BPE and the files SigLIP ships.

Every image-text model turns prompts into a fixed-size ``[B, context_length]`` tensor of token
ids, but each family does it its own way, and the text tower only works with the way it was
trained:

- CLIP (OpenAI, open_clip): ``<start> text <end>`` then zeros, BPE from
  :mod:`pipeline.models.tokenizer`; context 77.
- SigLIP (T5-style SentencePiece ``spiece.model``, or the same vocabulary as a
  ``tokenizer.json``): the text is canonicalised first (lower-cased, ASCII punctuation
  removed, whitespace folded), ``</s>`` (id 1) ends it and pads it to 64.
- SigLIP 2 (Gemma's ``tokenizer.json``): lower-cased, no ``<bos>``, ``<eos>`` (id 1) ends it,
  ``<pad>`` (id 0) pads it to 64.

SigLIP pools the *last* position of the sequence, so the padding is part of the input: a
prompt padded with the wrong id, or not padded to the full length, gets another embedding
with no error anywhere. Both SigLIP tokenizers keep the end token when a text is cut to the
context (the text is shortened, then the end token appended), as Hugging Face ``transformers``
and big_vision do.

A ``tokenizer_config.json`` beside the tokenizer file overrides the family defaults it names
(``pad_token``, ``add_bos_token``, ``add_eos_token``), as ``transformers`` reads it.

The files are parsed by the libraries made for them (``tokenizers`` for ``tokenizer.json``,
``sentencepiece`` for ``spiece.model``); only SigLIP's canonicalisation is written here, because
it is a preprocessing step of the model, not of the tokenizer file.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast, runtime_checkable

from pipeline.errors import TokenizerError
from pipeline.models.tokenizer import get_tokenizer, tokenize

if TYPE_CHECKING:
    import sentencepiece
    import tokenizers
    import torch

__all__ = [
    "ClipBpeTokenizer",
    "JsonTokenizer",
    "SentencePieceTokenizer",
    "TextTokenizer",
    "TextTooLong",
    "TokenizerFamily",
    "check_text_length",
    "load_text_tokenizer",
]

TokenizerFamily = Literal["siglip", "siglip2"]

#: Largest tokenizer file read (Gemma's tokenizer.json is about 34 MB; spiece.model 0.8 MB).
_MAX_TOKENIZER_BYTES = 64 << 20
#: Largest tokenizer_config.json read.
_MAX_CONFIG_BYTES = 1 << 20
#: How much of a text an error message quotes.
_QUOTE_CHARS = 60

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WHITESPACE = re.compile(r"\s+")


@runtime_checkable
class TextTokenizer(Protocol):
    """Texts to the fixed-size token id tensor one text tower was trained on."""

    @property
    def context_length(self) -> int:
        """Tokens per text, special tokens and padding included."""
        ...

    @property
    def pad_id(self) -> int:
        """The id that fills a text up to ``context_length``."""
        ...

    def count(self, text: str) -> int:
        """How many tokens ``text`` needs, special tokens included, before any truncation."""
        ...

    def __call__(self, texts: str | Sequence[str], *, truncate: bool = False) -> torch.Tensor:
        """int64 ``[len(texts), context_length]``; a text over the context raises
        :class:`~pipeline.errors.TokenizerError` unless ``truncate``."""
        ...


@dataclass(frozen=True)
class TextTooLong:
    """A text longer than a model's text context (what ``policy lint`` reports)."""

    text: str  # the text as written
    tokens: int  # tokens it needs, special tokens included
    limit: int  # the model's context length

    def __str__(self) -> str:
        return (
            f"{_quote(self.text)} is {self.tokens} tokens long, over the model's limit of "
            f"{self.limit}; the model reads only the first {self.limit}"
        )


def check_text_length(tokenizer: TextTokenizer, text: str) -> TextTooLong | None:
    """``None`` if ``text`` fits ``tokenizer``'s context, else what is over by how much."""
    n = tokenizer.count(text)
    return TextTooLong(text, n, tokenizer.context_length) if n > tokenizer.context_length else None


def _quote(text: str) -> str:
    return repr(text) if len(text) <= _QUOTE_CHARS else repr(text[: _QUOTE_CHARS - 1]) + "…"


def _as_list(texts: str | Sequence[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TokenizerError(f"texts[{i}] is a {type(text).__name__}, not a str")
    return items


def _check_context(context_length: int) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, int):
        raise TokenizerError(f"context_length must be an int, not {type(context_length).__name__}")
    if context_length < 2:
        raise TokenizerError(f"context_length must be at least 2, not {context_length}")
    return context_length


def _too_long(text: str, n: int, limit: int) -> TokenizerError:
    return TokenizerError(
        f"text {_quote(text)} is {n} tokens long (with special tokens), more than the context "
        f"length of {limit}; shorten it or pass truncate=True"
    )


def _rows_to_tensor(rows: list[list[int]], context_length: int) -> torch.Tensor:
    import torch  # only here: counting tokens needs no torch

    if not rows:
        return torch.zeros((0, context_length), dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)


class ClipBpeTokenizer:
    """CLIP's BPE (:func:`pipeline.models.tokenizer.tokenize`): start, text, end, zeros."""

    def __init__(self, context_length: int = 77) -> None:
        self._context_length = _check_context(context_length)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def pad_id(self) -> int:
        return 0

    def count(self, text: str) -> int:
        return len(get_tokenizer().encode(text)) + 2

    def __call__(self, texts: str | Sequence[str], *, truncate: bool = False) -> torch.Tensor:
        return tokenize(_as_list(texts), context_length=self._context_length, truncate=truncate)


def canonicalize(text: str) -> str:
    """SigLIP's text canonicalisation: lower-case, drop ASCII punctuation, fold whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return _WHITESPACE.sub(" ", text).strip()


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise TokenizerError(f"{path}: {what} is {size} bytes, over the limit of {limit}")
        return path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"cannot read {what} {path}: {e.strerror or e}") from e


def _token_name(value: object, key: str, path: Path) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or ``{"content": ...}``."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value or len(value) > 100:
        raise TokenizerError(f"{path}: {key} is not a token string")
    return value


@dataclass(frozen=True)
class _TokenizerConfig:
    pad_token: str | None = None
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None


def _read_tokenizer_config(directory: Path) -> _TokenizerConfig:
    path = directory / "tokenizer_config.json"
    if not path.is_file():
        return _TokenizerConfig()
    raw = _read_bounded(path, _MAX_CONFIG_BYTES, "tokenizer config")
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        raise TokenizerError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise TokenizerError(f"{path}: not a JSON object")
    flags: dict[str, bool | None] = {}
    for key in ("add_bos_token", "add_eos_token"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, bool):
            raise TokenizerError(f"{path}: {key} must be true or false, not {value!r}")
        flags[key] = value
    return _TokenizerConfig(
        pad_token=_token_name(cfg.get("pad_token"), "pad_token", path),
        add_bos_token=flags["add_bos_token"],
        add_eos_token=flags["add_eos_token"],
    )


class SentencePieceTokenizer:
    """SigLIP's T5-style SentencePiece tokenizer (``spiece.model``).

    ``canonicalize(text)``, SentencePiece ids, ``</s>`` appended (kept when the text is cut),
    padded to ``context_length`` with ``pad_id`` (SigLIP pads with ``</s>``, id 1).
    """

    def __init__(
        self, model_file: str | Path, *, context_length: int = 64, pad_token: str | None = None
    ) -> None:
        import sentencepiece as spm

        path = Path(model_file)
        proto = _read_bounded(path, _MAX_TOKENIZER_BYTES, "SentencePiece model")
        self._sp: sentencepiece.SentencePieceProcessor = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError, TypeError) as e:
            raise TokenizerError(f"{path}: not a SentencePiece model: {e}") from e
        self._context_length = _check_context(context_length)
        self._eos = int(self._sp.eos_id())
        if self._eos < 0:
            raise TokenizerError(f"{path}: the SentencePiece model has no end-of-sequence token")
        pad = self._eos
        if pad_token is not None:
            pad = int(self._sp.piece_to_id(pad_token))
            if self._sp.id_to_piece(pad) != pad_token:
                raise TokenizerError(f"{path}: pad token {pad_token!r} is not in the vocabulary")
        self._pad = pad

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def _ids(self, text: str) -> list[int]:
        return [*cast(list[int], self._sp.encode(canonicalize(text))), self._eos]

    def count(self, text: str) -> int:
        return len(self._ids(text))

    def __call__(self, texts: str | Sequence[str], *, truncate: bool = False) -> torch.Tensor:
        limit = self._context_length
        rows = []
        for text in _as_list(texts):
            ids = self._ids(text)
            if len(ids) > limit:
                if not truncate:
                    raise _too_long(text, len(ids), limit)
                ids = [*ids[: limit - 1], self._eos]
            rows.append(ids + [self._pad] * (limit - len(ids)))
        return _rows_to_tensor(rows, limit)


class JsonTokenizer:
    """A Hugging Face ``tokenizer.json`` run by the ``tokenizers`` library, padded to a fixed
    length.

    ``add_bos``/``add_eos`` rebuild the post-processor as ``transformers`` does from
    ``add_bos_token``/``add_eos_token`` (``None`` keeps the file's own). ``lowercase`` puts a
    lower-casing normaliser in front of the file's (SigLIP 2's training default);
    ``canonical`` applies SigLIP's canonicalisation to the text first (SigLIP 1's vocabulary
    as a ``tokenizer.json``). Truncation keeps the special tokens.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        context_length: int = 64,
        pad_token: str,
        add_bos: bool | None = None,
        add_eos: bool | None = None,
        lowercase: bool = False,
        canonical: bool = False,
    ) -> None:
        from tokenizers import Tokenizer, normalizers

        path = Path(path)
        raw = _read_bounded(path, _MAX_TOKENIZER_BYTES, "tokenizer file")
        try:
            tok = Tokenizer.from_str(raw.decode("utf-8"))
        except Exception as e:  # the Rust library raises a bare Exception for a bad file
            raise TokenizerError(f"{path}: not a tokenizer.json: {e}") from e
        self._context_length = _check_context(context_length)
        pad = tok.token_to_id(pad_token)
        if pad is None:
            raise TokenizerError(f"{path}: pad token {pad_token!r} is not in the vocabulary")
        self._pad = int(pad)
        if add_bos is not None or add_eos is not None:
            tok.post_processor = _template(tok, path, add_bos=add_bos, add_eos=add_eos)
        if lowercase:
            steps = [normalizers.Lowercase()]
            if tok.normalizer is not None:
                steps.append(tok.normalizer)
            tok.normalizer = normalizers.Sequence(steps)
        self._canonical = canonical
        tok.no_padding()
        tok.no_truncation()
        self._tok: tokenizers.Tokenizer = tok
        # Truncation and padding live in the library, so the end token survives a cut.
        self._fixed = Tokenizer.from_str(tok.to_str())
        self._fixed.enable_truncation(self._context_length)
        self._fixed.enable_padding(
            length=self._context_length, pad_id=self._pad, pad_token=pad_token
        )

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def _prepare(self, texts: list[str]) -> list[str]:
        return [canonicalize(t) for t in texts] if self._canonical else texts

    def count(self, text: str) -> int:
        return len(self._tok.encode(self._prepare([text])[0]).ids)

    def __call__(self, texts: str | Sequence[str], *, truncate: bool = False) -> torch.Tensor:
        items = _as_list(texts)
        prepared = self._prepare(items)
        if not truncate:
            for text, enc in zip(items, self._tok.encode_batch(prepared), strict=True):
                if len(enc.ids) > self._context_length:
                    raise _too_long(text, len(enc.ids), self._context_length)
        rows = [list(enc.ids) for enc in self._fixed.encode_batch(prepared)]
        return _rows_to_tensor(rows, self._context_length)


def _template(
    tok: tokenizers.Tokenizer, path: Path, *, add_bos: bool | None, add_eos: bool | None
) -> tokenizers.processors.PostProcessor:
    """``[bos] $A [eos]`` as ``transformers`` builds it from the two flags."""
    from tokenizers import processors

    specials: list[tuple[str, int]] = []
    single = "$A:0"
    wanted = ((add_bos, ("<bos>", "<s>"), True), (add_eos, ("<eos>", "</s>"), False))
    for flag, names, before in wanted:
        if not flag:
            continue
        found = [(n, i) for n in names if (i := tok.token_to_id(n)) is not None]
        if not found:
            raise TokenizerError(f"{path}: asked to add {names[0]} but it is not in the vocabulary")
        name, token_id = found[0]
        specials.append((name, int(token_id)))
        single = f"{name}:0 {single}" if before else f"{single} {name}:0"
    return processors.TemplateProcessing(single=single, special_tokens=specials)


# What each family does when its tokenizer_config.json does not say: pad token, bos, eos,
# lower-case, canonicalise.
_FAMILY_DEFAULTS: dict[TokenizerFamily, tuple[str, bool | None, bool | None, bool, bool]] = {
    "siglip": ("</s>", None, None, False, True),
    "siglip2": ("<pad>", False, True, True, False),
}


def load_text_tokenizer(
    directory: str | Path, *, family: TokenizerFamily, context_length: int = 64
) -> TextTokenizer:
    """The tokenizer shipped beside a SigLIP checkpoint in ``directory``.

    ``tokenizer.json`` is preferred (``tokenizers``); else ``spiece.model`` (``sentencepiece``,
    SigLIP 1 only). Raises :class:`~pipeline.errors.TokenizerError` naming the files looked for.
    """
    directory = Path(directory)
    cfg = _read_tokenizer_config(directory)
    pad, bos, eos, lower, canonical = _FAMILY_DEFAULTS[family]
    pad = cfg.pad_token or pad
    json_file = directory / "tokenizer.json"
    if json_file.is_file():
        return JsonTokenizer(
            json_file,
            context_length=context_length,
            pad_token=pad,
            add_bos=cfg.add_bos_token if cfg.add_bos_token is not None else bos,
            add_eos=cfg.add_eos_token if cfg.add_eos_token is not None else eos,
            lowercase=lower,
            canonical=canonical,
        )
    spiece = directory / "spiece.model"
    if family == "siglip" and spiece.is_file():
        return SentencePieceTokenizer(spiece, context_length=context_length, pad_token=pad)
    wanted = "tokenizer.json or spiece.model" if family == "siglip" else "tokenizer.json"
    raise TokenizerError(
        f"no tokenizer beside the weights in {directory}: a {family} checkpoint needs its "
        f"{wanted} (download the whole model folder, not only the weights)"
    )
