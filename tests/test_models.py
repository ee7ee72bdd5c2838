"""CLIP architecture, weight formats and the registry, against reference implementations.

Parity is with Hugging Face ``transformers`` ``CLIPModel`` on random weights (ViT towers), and
with ``torch.nn.MultiheadAttention`` for the attention blocks (what OpenAI's code calls). The
ResNet towers are checked by shape against every release and by bit-exact round trips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import (
    ConfigError,
    StateDictMismatch,
    WeightsFormatError,
    WeightsNotFound,
)
from pipeline.models import (
    CLIP,
    build_model,
    get_model_info,
    list_models,
    load_clip,
    registry,
    save_clip,
)
from pipeline.models.formats import read_weights, to_hf_state_dict
from pipeline.models.model import (
    AttentionPool2d,
    CLIPConfig,
    SelfAttention,
    TextConfig,
    VisionConfig,
    config_from_state_dict,
)
from pipeline.models.tokenizer import tokenize

transformers = pytest.importorskip("transformers")

# OpenAI's published parameter counts for each release (the whole model, both towers).
_PARAMS = {
    "RN50": 102_007_137,
    "RN101": 119_688_033,
    "RN50x4": 178_300_601,
    "RN50x16": 290_979_217,
    "RN50x64": 623_258_305,
    "ViT-B/32": 151_277_313,
    "ViT-B/16": 149_620_737,
    "ViT-L/14": 427_616_513,
    "ViT-L/14@336px": 427_944_193,
}

_TEXTS = [
    "a photo of a red triangle",
    "the word spam printed on a wall",
    "two people fighting in a crowded street at night",
    "x",
    "an empty background",
]


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst row's relative error ||a - b|| / ||b||."""
    return float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


def _hf_model(tmp_path: Path, *, vision: dict[str, int], text: dict[str, int], proj: int):
    cfg = transformers.CLIPConfig(
        text_config={"max_position_embeddings": 77, "vocab_size": 49408, **text},
        vision_config=vision,
        projection_dim=proj,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # random LayerNorm affine too, so every weight is exercised
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    model.save_pretrained(tmp_path)
    return model


def _hf_features(out: object) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("label", "vision", "text", "proj", "res"),
    [
        (
            "small",
            {
                "hidden_size": 96,
                "intermediate_size": 384,
                "num_attention_heads": 3,
                "num_hidden_layers": 2,
                "image_size": 48,
                "patch_size": 8,
            },
            {
                "hidden_size": 64,
                "intermediate_size": 256,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
            },
            48,
            48,
        ),
        (
            "vit-b-32",
            {
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_attention_heads": 12,
                "num_hidden_layers": 12,
                "image_size": 224,
                "patch_size": 32,
            },
            {
                "hidden_size": 512,
                "intermediate_size": 2048,
                "num_attention_heads": 8,
                "num_hidden_layers": 12,
            },
            512,
            224,
        ),
    ],
)
def test_parity_with_transformers(tmp_path, label, vision, text, proj, res):
    hf = _hf_model(tmp_path, vision=vision, text=text, proj=proj)
    ours = load_clip(tmp_path / "model.safetensors")
    assert ours.input_resolution == res and ours.embed_dim == proj
    assert ours.config.vision.heads == vision["num_attention_heads"]  # read from config.json
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(4, 3, res, res, generator=gen)
    tokens = tokenize(_TEXTS)
    with torch.no_grad():
        ref_img = _hf_features(hf.get_image_features(pixel_values=pixels))
        ref_txt = _hf_features(hf.get_text_features(input_ids=tokens))
    with torch.inference_mode():
        img = ours.encode_image(pixels)
        txt = ours.encode_text(tokens)
    assert img.shape == ref_img.shape and txt.shape == ref_txt.shape
    assert _rel_err(img, ref_img) < 1e-5, label
    assert _rel_err(txt, ref_txt) < 1e-5, label
    assert torch.equal(ours.logit_scale, hf.logit_scale.detach())


def test_attention_matches_torch_multihead(tmp_path):
    torch.manual_seed(0)
    ours = SelfAttention(64, 4)
    ref = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    for p in ref.parameters():
        torch.nn.init.normal_(p)
    ours.load_state_dict(ref.state_dict())  # the same parameter names
    x = torch.randn(3, 10, 64)
    mask = torch.triu(torch.full((10, 10), float("-inf")), diagonal=1)
    with torch.no_grad():
        expected_causal = ref(x, x, x, attn_mask=mask, need_weights=False)[0]
        expected_full = ref(x, x, x, need_weights=False)[0]
        assert _rel_err(ours(x, causal=True), expected_causal) < 1e-5
        assert _rel_err(ours(x), expected_full) < 1e-5


def test_attention_pool_matches_torch_multihead():
    torch.manual_seed(0)
    pool = AttentionPool2d(spatial=3, width=64, heads=4, output_dim=32)
    for p in pool.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 64, 3, 3)
    seq = x.flatten(2).permute(2, 0, 1)  # (HW, N, C)
    seq = torch.cat([seq.mean(dim=0, keepdim=True), seq]) + pool.positional_embedding[:, None]
    expected, _ = F.multi_head_attention_forward(
        query=seq[:1],
        key=seq,
        value=seq,
        embed_dim_to_check=64,
        num_heads=4,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    with torch.no_grad():
        assert _rel_err(pool(x), expected[0]) < 1e-5


@pytest.mark.parametrize(
    "info", [m for m in list_models() if m.hf is None], ids=lambda m: m.name
)  # OpenAI's releases and the demo model (the Hugging Face entries: tests/test_openclip_zoo.py)
def test_every_release_instantiates_with_its_shapes(info):
    with torch.device("meta"):
        model = CLIP(info.config)
    if info.name in _PARAMS:
        assert sum(p.numel() for p in model.parameters()) == _PARAMS[info.name]
    # the architecture read back off the state dict's shapes is the registered one (head
    # counts are not in the shapes: OpenAI's follow a convention, the demo model's are stored)
    heads = {"vision_heads": info.config.vision.heads, "text_heads": info.config.text.heads}
    assert config_from_state_dict(model.state_dict(), **heads) == info.config
    if not info.demo:
        assert config_from_state_dict(model.state_dict()) == info.config
    res = info.image_resolution
    image = model.encode_image(torch.empty(2, 3, res, res, device="meta"))
    tokens = torch.zeros(2, model.context_length, dtype=torch.long, device="meta")
    assert tuple(image.shape) == (2, info.embed_dim)
    assert tuple(model.encode_text(tokens).shape) == (2, info.embed_dim)


def test_registry_urls_carry_sha256():
    for info in list_models():
        if info.bundled or info.hf is not None:  # Hugging Face entries: per-file sources
            continue
        assert len(info.sha256) == 64 and int(info.sha256, 16) >= 0
        assert info.url.endswith(f"/{info.sha256}/{info.filename}")
        assert info.url.startswith("https://")
    assert get_model_info("ViT-L/14@336px").image_resolution == 336
    assert get_model_info("RN50x64").image_resolution == 448
    with pytest.raises(ConfigError, match="known models"):
        get_model_info("ViT-H/14")


@pytest.fixture(scope="module")
def rn50() -> CLIP:
    torch.manual_seed(0)
    model = CLIP(get_model_info("RN50").config)
    model.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():  # non-trivial BatchNorm statistics, so they must round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _assert_bit_exact(loaded: CLIP, reference: CLIP) -> None:
    ref = reference.state_dict()
    got = loaded.state_dict()
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        assert torch.equal(got[key], value), key


def _torchscript_archive(model: CLIP, path: Path) -> None:
    res = model.input_resolution
    with warnings.catch_warnings():  # the tracer warns about our Python-side shape checks
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(
            model, {"encode_image": torch.zeros(1, 3, res, res)}, check_trace=False
        )
    traced.save(str(path))


def test_rn50_round_trips_through_every_format(tmp_path, rn50, monkeypatch):
    sd = rn50.state_dict()
    files = {}
    files["state-dict"] = tmp_path / "RN50-state.pt"
    torch.save(sd, files["state-dict"])
    files["open_clip-bin"] = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
        files["open_clip-bin"],
    )
    from safetensors.torch import save_file

    files["open_clip-safetensors"] = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, files["open_clip-safetensors"])
    files["clipguard-safetensors"] = save_clip(rn50, tmp_path / "ours.safetensors")
    files["openai-torchscript"] = tmp_path / "RN50.pt"
    _torchscript_archive(rn50, files["openai-torchscript"])
    with zipfile.ZipFile(files["openai-torchscript"]) as zf:  # a real TorchScript archive
        assert any(n.endswith("constants.pkl") for n in zf.namelist())
    # an archive is read only when the registry lists its SHA-256, as it lists OpenAI's
    digest = hashlib.sha256(files["openai-torchscript"].read_bytes()).hexdigest()
    release = dataclasses.replace(get_model_info("RN50"), name="RN50-test", sha256=digest)
    monkeypatch.setitem(registry._MODELS, release.name, release)

    formats = {}
    for label, path in files.items():
        weights = read_weights(path)
        formats[label] = weights.format
        loaded = load_clip(path)
        _assert_bit_exact(loaded, rn50)
        assert loaded.config == rn50.config
    assert formats["openai-torchscript"] == "openai-torchscript"
    assert formats["state-dict"] == "state-dict"
    assert formats["open_clip-safetensors"] == "safetensors"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        got = load_clip(files["openai-torchscript"]).encode_image(x)
        expected = rn50.encode_image(x)
    assert not torch.allclose(expected[0], expected[1])  # the output depends on the input
    # equal weights; only kernel selection by memory alignment may differ in the last bits
    assert _rel_err(got, expected) < 1e-6


def test_vit_round_trips_through_hf_layout(tmp_path):
    cfg = CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(
            kind="vit", image_resolution=32, width=64, layers=2, heads=1, patch_size=8
        ),
        text=TextConfig(context_length=77, width=64, heads=1, layers=2),
    )
    model = CLIP(cfg)
    model.init_weights(torch.Generator().manual_seed(5))
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(to_hf_state_dict(model.state_dict()), path)
    weights = read_weights(path)
    assert weights.format == "hf-safetensors"
    _assert_bit_exact(load_clip(path), model)


def test_strict_loading_names_missing_and_unexpected_keys(rn50):
    sd = dict(rn50.state_dict())
    del sd["visual.layer2.0.bn1.weight"]
    sd["visual.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(StateDictMismatch) as info:
        build_model(sd)
    message = str(info.value)
    assert "visual.layer2.0.bn1.weight" in message and "visual.extra_head.weight" in message
    assert info.value.missing == ["visual.layer2.0.bn1.weight"]
    assert info.value.unexpected == ["visual.extra_head.weight"]

    sd = dict(rn50.state_dict())
    sd["visual.attnpool.c_proj.bias"] = torch.zeros(5)
    with pytest.raises(StateDictMismatch, match=r"shape mismatches.*attnpool\.c_proj\.bias"):
        build_model(sd)


def test_unreadable_and_missing_files(tmp_path, monkeypatch):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(WeightsFormatError, match=r"junk\.pt"):
        load_clip(junk)
    not_clip = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(2, 2)}, not_clip)
    with pytest.raises(StateDictMismatch, match="not a CLIP state dict"):
        load_clip(not_clip)
    with pytest.raises(WeightsNotFound, match="neither a registered model"):
        load_clip(tmp_path / "nope.pt")
    monkeypatch.setenv("CLIPGUARD_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(WeightsNotFound) as info:
        load_clip("ViT-B/32")
    message = str(info.value)
    assert str(tmp_path / "cache" / "ViT-B-32.safetensors") in message
    assert "clipguard models download ViT-B/32" in message


@pytest.fixture(scope="module")
def small_vit() -> CLIP:
    cfg = CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(
            kind="vit", image_resolution=64, width=128, layers=2, heads=2, patch_size=16
        ),
        text=TextConfig(context_length=77, width=128, heads=2, layers=2),
    )
    model = CLIP(cfg)
    model.init_weights(torch.Generator().manual_seed(2))
    return model.eval().requires_grad_(False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precisions_track_fp32(tmp_path, small_vit, dtype):
    path = save_clip(small_vit, tmp_path / "m.safetensors")
    low = load_clip(path, dtype=dtype)
    assert low.dtype == dtype
    frames = torch.randint(
        0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4)
    )
    with torch.inference_mode():
        ref_img = small_vit.encode_image(small_vit.preprocess(frames))
        img = low.encode_image(low.preprocess(frames))
        ref_txt = small_vit.encode_text(tokenize(_TEXTS))
        txt = low.encode_text(tokenize(_TEXTS))
    assert img.dtype == dtype and txt.dtype == dtype
    assert F.cosine_similarity(img.float(), ref_img, dim=-1).min() > 0.995
    assert F.cosine_similarity(txt.float(), ref_txt, dim=-1).min() > 0.995


def test_preprocess_normalises_uint8_on_the_model(small_vit):
    frames = torch.randint(
        0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(6)
    )
    got = small_vit.preprocess(frames)
    mean = torch.tensor(small_vit.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(small_vit.image_std).view(1, 3, 1, 1)
    expected = (frames.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    assert got.shape == (2, 3, 64, 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    resized = small_vit.preprocess(torch.zeros(1, 100, 80, 3, dtype=torch.uint8))
    assert resized.shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="uint8"):
        small_vit.preprocess(frames.float())
    with pytest.raises(ConfigError, match="preprocess"):
        small_vit.encode_image(torch.zeros(1, 3, 32, 32))


def test_text_encoder_is_causal(small_vit):
    # a token after the end-of-text position must not change the sentence embedding
    tokens = tokenize(["a red triangle"])
    eot = int(tokens.argmax())
    altered = tokens.clone()
    altered[0, eot + 1] = 1234
    with torch.inference_mode():
        assert torch.allclose(
            small_vit.encode_text(tokens), small_vit.encode_text(altered), atol=1e-6
        )
        altered[0, 1] = 4321  # a token before it does
        assert not torch.allclose(
            small_vit.encode_text(tokens), small_vit.encode_text(altered), atol=1e-3
        )
