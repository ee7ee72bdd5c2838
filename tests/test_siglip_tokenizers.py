"""SigLIP and SigLIP 2 tokenizers against ``transformers``' own, built offline from files made here.

SigLIP: a small T5-style SentencePiece model trained in the test (pad 0, ``</s>`` 1, unk 2),
against ``SiglipTokenizer``. SigLIP 2: a small byte-fallback BPE ``tokenizer.json`` in Gemma's
layout (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2) with the post-processor and
``tokenizer_config.json`` that the SigLIP 2 conversion writes (no ``<bos>``, ``<eos>`` added),
against ``Siglip2Tokenizer``. Both padded to 64 and truncated as ``padding="max_length",
truncation=True, max_length=64`` does.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch

from pipeline.errors import TokenizerError
from pipeline.models.text_tokenizers import (
    ClipBpeTokenizer,
    JsonTokenizer,
    SentencePieceTokenizer,
    TextTokenizer,
    canonicalize,
    check_text_length,
    load_text_tokenizer,
)
from pipeline.models.tokenizer import tokenize

transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
tokenizers = pytest.importorskip("tokenizers")

_WORDS = [
    "a", "photo", "of", "the", "red", "triangle", "knife", "gun", "crowd", "street",
    "night", "spam", "sign", "blood", "fight", "people", "dog", "cat", "on", "in",
    "with", "two", "man", "woman", "child", "car", "fire", "smoke", "weapon",
]  # fmt: skip

# Texts the parity holds for. Literal special-token strings ("</s>", "<eos>") are left out:
# transformers splits them out of the text as special tokens, the reference (big_vision) does
# not, and neither belongs in a moderation prompt.
TEXTS = [
    "a photo of a red triangle",
    "Hello, World! It's a TEST: (x) [y] {z}.",
    "  spaced   out\ttext \n",
    "",
    "Über café naïve FAÇADE",
    "数字 123 \uff14\uff15\uff16",  # full-width digits
    "two people fighting in a crowded street at night, with smoke and fire " * 6,
    "dog " * 100,
    "▁underlined▁ words",
    "emoji 🙂 and symbols ™ ©",
]


def _corpus(n: int = 3000) -> list[str]:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]
    return lines + ["Hello, World! It's a test: (x) [y] {z}. Über café 数字 123"] * 20


@pytest.fixture(scope="module")
def spiece_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("siglip-tok")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=300,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "spiece.model").write_bytes(model.getvalue())
    return folder


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    folder = tmp_path_factory.mktemp("siglip2-tok")
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    specials += [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <eos>:0", special_tokens=[("<eos>", 1)]
    )
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "add_bos_token": False,
        "add_eos_token": True,
        "padding_side": "right",
        "pad_token": "<pad>",
        "eos_token": "<eos>",
        "bos_token": "<bos>",
        "unk_token": "<unk>",
        "model_max_length": 64,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _hf_ids(hf_tokenizer: object, texts: list[str]) -> torch.Tensor:
    out = hf_tokenizer(  # type: ignore[operator]
        texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt"
    )
    return out["input_ids"]


def test_siglip_sentencepiece_parity(spiece_dir):
    ref = transformers.SiglipTokenizer(vocab_file=str(spiece_dir / "spiece.model"))
    ours = load_text_tokenizer(spiece_dir, family="siglip")
    assert isinstance(ours, SentencePieceTokenizer) and isinstance(ours, TextTokenizer)
    ids = ours(TEXTS, truncate=True)
    assert ids.shape == (len(TEXTS), 64) and ids.dtype == torch.long
    assert torch.equal(ids, _hf_ids(ref, TEXTS))
    assert ours.pad_id == 1  # SigLIP pads with </s>
    assert ids[0, -1].item() == 1 and ids[3].tolist() == [1] * 64
    long_row = ids[TEXTS.index("dog " * 100)]
    assert long_row[-1].item() == 1 and (long_row[:-1] != 1).all()  # cut, end token kept


def test_siglip2_gemma_json_parity(gemma_dir):
    ref = transformers.Siglip2Tokenizer.from_pretrained(str(gemma_dir))
    ours = load_text_tokenizer(gemma_dir, family="siglip2")
    assert isinstance(ours, JsonTokenizer)
    ids = ours(TEXTS, truncate=True)
    assert torch.equal(ids, _hf_ids(ref, TEXTS))
    assert ours.pad_id == 0  # Gemma's <pad>
    assert ids[3, 0].item() == 1 and (ids[3, 1:] == 0).all()  # "" is <eos> then padding
    long_row = ids[TEXTS.index("dog " * 100)]
    assert long_row[-1].item() == 1 and (long_row != 0).all()
    # lower-cased, as SigLIP 2 was trained
    assert torch.equal(ours(["A RED Triangle"]), ours(["a red triangle"]))


def test_siglip_vocabulary_as_tokenizer_json_matches_sentencepiece(spiece_dir, tmp_path):
    """A SigLIP 1 folder may carry the same vocabulary as tokenizer.json (transformers' T5
    conversion); canonicalisation still applies and the ids are the SentencePiece ones."""
    from transformers.convert_slow_tokenizer import SpmConverter

    class _T5Like:
        vocab_file = str(spiece_dir / "spiece.model")
        handle_byte_fallback = False

    converted = SpmConverter(_T5Like()).converted()
    from tokenizers import processors

    converted.post_processor = processors.TemplateProcessing(
        single="$A:0 </s>:0", special_tokens=[("</s>", 1)]
    )
    converted.save(str(tmp_path / "tokenizer.json"))
    json_tok = load_text_tokenizer(tmp_path, family="siglip")
    sp_tok = load_text_tokenizer(spiece_dir, family="siglip")
    texts = [t for t in TEXTS if "▁" not in t]
    assert torch.equal(json_tok(texts, truncate=True), sp_tok(texts, truncate=True))


def test_canonicalize_is_siglips():
    assert canonicalize("  Hello,   World! It's\tA TEST.  ") == "hello world its a test"
    assert canonicalize("(x) [y] {z}") == "x y z"


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_overlong_text_raises_unless_truncated(family, spiece_dir, gemma_dir):
    folder = spiece_dir if family == "siglip" else gemma_dir
    tok = load_text_tokenizer(folder, family=family)
    with pytest.raises(TokenizerError, match="more than the context length of 64"):
        tok(["dog " * 100])
    assert tok(["dog " * 100], truncate=True).shape == (1, 64)
    assert tok([]).shape == (0, 64)
    assert tok("one text").shape == (1, 64)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_check_text_length_names_the_limit(family, spiece_dir, gemma_dir):
    folder = spiece_dir if family == "siglip" else gemma_dir
    tok = load_text_tokenizer(folder, family=family)
    assert check_text_length(tok, "a photo of a dog") is None
    too_long = check_text_length(tok, "dog " * 100)
    assert too_long is not None
    assert too_long.limit == 64 and too_long.tokens == tok.count("dog " * 100) > 64
    assert "over the model's limit of 64" in str(too_long)
    # the count is what the tokenizer really produces, end token included
    text = "a photo of a dog"
    assert tok.count(text) == int((tok([text])[0] != tok.pad_id).sum()) + (
        1 if tok.pad_id == 1 else 0
    )


def test_clip_bpe_wrapper_is_tokenize():
    tok = ClipBpeTokenizer(77)
    texts = ["a photo of a red triangle", "x"]
    assert torch.equal(tok(texts), tokenize(texts))
    assert tok.count("a photo") == 4  # start, two words, end
    assert check_text_length(tok, "word " * 80) is not None
    assert check_text_length(tok, "word " * 70) is None


def test_clip_model_tokenizes_with_bpe():
    from pipeline.models import load_model

    model = load_model("clipguard-demo")
    assert model.score_kind == "cosine" and model.logit_bias is None and model.family == "clip"
    ids = model.tokenize(["a red triangle"])
    assert torch.equal(ids, tokenize(["a red triangle"], context_length=model.context_length))


# --- hostile tokenizer files --------------------------------------------------------------


def test_missing_tokenizer_names_the_files(tmp_path):
    with pytest.raises(TokenizerError, match=r"tokenizer\.json or spiece\.model"):
        load_text_tokenizer(tmp_path, family="siglip")
    (tmp_path / "spiece.model").write_bytes(b"x")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        load_text_tokenizer(tmp_path, family="siglip2")  # SigLIP 2 needs tokenizer.json


def test_corrupt_sentencepiece_model(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x00not a model" * 10)
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        load_text_tokenizer(tmp_path, family="siglip")


def test_corrupt_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(TokenizerError, match=r"not a tokenizer\.json"):
        load_text_tokenizer(tmp_path, family="siglip2")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[1, 2]", "not a JSON object"),
        ("{oops", "not valid JSON"),
        ('{"add_eos_token": "yes"}', "add_eos_token"),
        ('{"pad_token": 7}', "pad_token"),
        ('{"pad_token": "<nope>"}', "not in the vocabulary"),
    ],
)
def test_bad_tokenizer_config(gemma_dir, tmp_path, config, message):
    (tmp_path / "tokenizer.json").write_bytes((gemma_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(config)
    with pytest.raises(TokenizerError, match=message):
        load_text_tokenizer(tmp_path, family="siglip2")


def test_oversized_tokenizer_file_is_refused(tmp_path, monkeypatch):
    from pipeline.models import text_tokenizers

    monkeypatch.setattr(text_tokenizers, "_MAX_TOKENIZER_BYTES", 100)
    (tmp_path / "tokenizer.json").write_text(" " * 200)
    with pytest.raises(TokenizerError, match="over the limit"):
        load_text_tokenizer(tmp_path, family="siglip2")


def test_non_string_text_is_refused(spiece_dir):
    tok = load_text_tokenizer(spiece_dir, family="siglip")
    with pytest.raises(TokenizerError, match=r"texts\[1\] is a int"):
        tok(["ok", 3])  # type: ignore[list-item]


def test_tokenizer_context_must_match_the_model(spiece_dir, tmp_path):
    """The loader attaches a tokenizer of the model's own context; another one is refused."""
    from pipeline.errors import ConfigError
    from pipeline.models import load_model

    model = load_model("clipguard-demo")
    with pytest.raises(ConfigError, match="does not match"):
        model.text_tokenizer = SentencePieceTokenizer(spiece_dir / "spiece.model")
