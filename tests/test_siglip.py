"""SigLIP and SigLIP 2 against their reference implementations, on random weights, in fp32.

References: ``transformers``' ``SiglipModel`` (SigLIP, and fixed-resolution SigLIP 2, which
uses the same class) and ``Siglip2Model`` (the NaFlex checkpoints, loaded here at a fixed
resolution), each at a small size and at B/16 size; open_clip's ``CustomTextCLIP`` with a timm
SigLIP tower for the open_clip/timm layout. Image embeddings, text embeddings and the sigmoid
logits must agree within a relative error of 1e-5.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import (
    ConfigError,
    StateDictMismatch,
    TokenizerError,
    WeightsFormatError,
)
from pipeline.models import ImageTextModel, SigLIP, load_clip, load_model
from pipeline.models.siglip_formats import is_siglip_state_dict

transformers = pytest.importorskip("transformers")

_TOL = 1e-5

_SMALL_VISION = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
}
_SMALL_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 300,
}
# B/16's widths, heads and patching with 3 layers, not 12: the loader must find the depth in
# the checkpoint (12 would also be the release's), and a quarter of the depth is a quarter of
# the time to build, save, load and run both models
_B16 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 3,
}


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst row's relative error ||a - b|| / ||b||."""
    return float(((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random, LayerNorms around 1 and biases non-zero, so each one matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 16
                p.copy_(torch.randn(p.shape, generator=gen) * fan_in**-0.5)


def _hf_random(model_class, config):
    """A transformers model with random weights, without its (slow, B/16-sized) initialiser:
    built on the meta device, given storage, randomised; index buffers refilled."""
    with torch.device("meta"):
        model = model_class(config)
    model.to_empty(device="cpu")
    _randomise(model)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("position_ids"):
                buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    return model.eval()


def _features(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


def _tokens(vocab: int, n: int = 4, length: int = 64, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, vocab, (n, length), generator=gen)
    tokens[0, 10:] = 1  # a short prompt padded to the context, as the tokenizer does
    return tokens


def _save_siglip(tmp_path: Path, vision: dict, text: dict, image_size: int, patch: int):
    cfg = transformers.SiglipConfig(
        vision_config={**vision, "image_size": image_size, "patch_size": patch},
        text_config=text,
    )
    model = _hf_random(transformers.SiglipModel, cfg)
    model.save_pretrained(tmp_path)
    return model


def _check_parity(ours: SigLIP, hf, res: int, vocab: int) -> None:
    pixels = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(2))
    tokens = _tokens(vocab, n=3)
    with torch.no_grad():
        out = hf(input_ids=tokens, pixel_values=pixels)
        ref_img = out.vision_model_output.pooler_output
        ref_txt = out.text_model_output.pooler_output
        ref_logits = out.logits_per_image
        img, txt = ours.encode_image(pixels), ours.encode_text(tokens)
        logits, logits_t = ours(pixels, tokens)
    assert _rel_err(img, ref_img) < _TOL
    assert _rel_err(txt, ref_txt) < _TOL
    assert float((logits - ref_logits).norm() / ref_logits.norm()) < _TOL
    assert torch.equal(logits_t, logits.t())


@pytest.mark.parametrize(
    ("vision", "text", "res", "patch"),
    [
        (_SMALL_VISION, _SMALL_TEXT, 32, 8),
        (_SMALL_VISION, _SMALL_TEXT, 38, 8),  # not a multiple, like So400m/14 at 384 px
        (_B16, {**_B16, "vocab_size": 32000}, 224, 16),
    ],
    ids=["small", "small-cropped", "b16-224"],
)
def test_parity_with_transformers_siglip(tmp_path, vision, text, res, patch):
    hf = _save_siglip(tmp_path, vision, text, res, patch)
    ours = load_model(tmp_path)  # the folder: model.safetensors and config.json
    assert isinstance(ours, SigLIP)
    assert ours.input_resolution == res
    assert ours.embed_dim == vision["hidden_size"]
    assert ours.context_length == 64
    assert ours.config.vision.heads == vision["num_attention_heads"]  # from config.json
    assert ours.config.vision.mlp_width == vision["intermediate_size"]
    assert ours.family == "siglip"
    _check_parity(ours, hf, res, text["vocab_size"])


def test_siglip2_fixed_resolution_is_siglipmodel_with_gemma_vocabulary(tmp_path):
    """Fixed-resolution SigLIP 2 checkpoints are SiglipModel checkpoints with Gemma's 256k
    vocabulary; that vocabulary is what marks the family (and so the tokenizer)."""
    text = {**_SMALL_TEXT, "hidden_size": 32, "intermediate_size": 48, "vocab_size": 256_000}
    vision = {**_SMALL_VISION, "hidden_size": 32, "intermediate_size": 48}
    hf = _save_siglip(tmp_path, vision, text, 32, 8)
    ours = load_model(tmp_path / "model.safetensors")
    assert isinstance(ours, SigLIP)
    assert ours.family == "siglip2"
    _check_parity(ours, hf, 32, 256_000)


def _naflex_patches(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """``Siglip2ImageProcessor``'s patch layout: (row, column) patches of (y, x, channel)."""
    n, c, h, w = pixels.shape
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch)  # (N, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (N, gh, gw, p, p, C)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


@pytest.mark.parametrize(
    ("vision", "text", "num_patches", "patch", "res"),
    [
        (_SMALL_VISION, _SMALL_TEXT, 16, 8, 32),  # the grid's own size
        (_SMALL_VISION, _SMALL_TEXT, 16, 8, 48),  # position grid resized 4x4 -> 6x6
        (_B16, {**_B16, "vocab_size": 32000}, 256, 16, 256),
    ],
    ids=["small-native", "small-resized", "b16-256"],
)
def test_parity_with_transformers_siglip2_naflex(tmp_path, vision, text, num_patches, patch, res):
    cfg = transformers.Siglip2Config(
        vision_config={**vision, "num_patches": num_patches, "patch_size": patch},
        text_config=text,
    )
    hf = _hf_random(transformers.Siglip2Model, cfg)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path, image_size=res)
    assert isinstance(ours, SigLIP)
    assert ours.input_resolution == res
    grid = res // patch
    pixels = torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(2))
    patches = _naflex_patches(pixels, patch)
    mask = torch.ones(2, grid * grid, dtype=torch.long)
    shapes = torch.tensor([[grid, grid]] * 2)
    tokens = _tokens(text["vocab_size"], n=3)
    with torch.no_grad():
        out = hf(
            input_ids=tokens,
            pixel_values=patches,
            pixel_attention_mask=mask,
            spatial_shapes=shapes,
        )
        ref_img = out.vision_model_output.pooler_output
        ref_txt = out.text_model_output.pooler_output
        ref_logits = out.logits_per_image
        logits, _ = ours(pixels, tokens)
        img, txt = ours.encode_image(pixels), ours.encode_text(tokens)
    assert _rel_err(img, ref_img) < _TOL
    assert _rel_err(txt, ref_txt) < _TOL
    assert float((logits - ref_logits).norm() / ref_logits.norm()) < _TOL


def test_parity_with_open_clip_siglip_layout(tmp_path):
    """open_clip's SigLIP (timm ViT with attention pool, open_clip text tower) loads from its
    own keys. The reference's GELUs run tanh-approximated, as the weights were trained (timm's
    SigLIP towers and open_clip's SigLIP 1 text default to exact GELU)."""
    from openclip_ref import import_open_clip

    import_open_clip()
    import timm
    from open_clip.model import CustomTextCLIP

    vision = {
        "image_size": 224,
        "timm_model_name": "vit_base_patch16_siglip_224",
        "timm_pool": "map",
        "timm_proj": "none",
    }
    text = {
        "context_length": 64,
        "vocab_size": 300,
        "width": 128,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 1.5,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    }
    torch.manual_seed(0)
    ref = CustomTextCLIP(embed_dim=128, vision_cfg=vision, text_cfg=text, init_logit_bias=-10)
    # a small tower of the same timm architecture (the registered one is B/16-sized)
    ref.visual.trunk = timm.create_model(
        "vit_base_patch16_siglip_224",
        pretrained=False,
        num_classes=0,
        depth=2,
        embed_dim=128,
        num_heads=2,
        patch_size=8,
        img_size=32,
        mlp_ratio=1.5,
    )
    ref.eval()
    _randomise(ref)
    for module in ref.modules():
        if isinstance(module, torch.nn.GELU):
            module.approximate = "tanh"
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    assert "visual.trunk.attn_pool.latent" in state and "text.text_projection.bias" in state
    save_file(state, str(tmp_path / "open_clip_model.safetensors"))
    ours = load_model(tmp_path)
    assert isinstance(ours, SigLIP)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = _tokens(300)
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(pixels), ref.encode_text(tokens)
        _, _, scale, bias = ref(pixels, tokens)
        img, txt = ours.encode_image(pixels), ours.encode_text(tokens)
    assert _rel_err(img, ref_img) < _TOL
    assert _rel_err(txt, ref_txt) < _TOL
    assert torch.allclose(ours.logit_scale.exp(), scale) and torch.allclose(ours.logit_bias, bias)


# --- the model interface ------------------------------------------------------------------


def _small_folder(tmp_path: Path) -> Path:
    _save_siglip(tmp_path, _SMALL_VISION, _SMALL_TEXT, 32, 8)
    return tmp_path


def test_siglip_offers_the_pipeline_interface(tmp_path):
    ours = load_model(_small_folder(tmp_path))
    assert isinstance(ours, ImageTextModel)
    assert ours.score_kind == "sigmoid"
    assert ours.logit_bias is not None and ours.logit_bias.shape == (1,)
    assert ours.image_mean == (0.5, 0.5, 0.5) and ours.image_std == (0.5, 0.5, 0.5)
    assert ours.name == str(tmp_path / "model.safetensors")
    assert len(ours.fingerprint()) == 64
    assert ours.device == torch.device("cpu") and ours.dtype == torch.float32
    frames = torch.randint(0, 256, (2, 40, 50, 3), dtype=torch.uint8)
    pixels = ours.preprocess(frames)
    assert pixels.shape == (2, 3, 32, 32)
    # 0 -> -1 and 255 -> 1: SigLIP's [-1, 1] pixel range
    half = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    half[:, :, 16:] = 255
    edge = ours.preprocess(half)
    assert edge.min().item() == pytest.approx(-1.0) and edge.max().item() == pytest.approx(1.0)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        ours.tokenize(["a knife"])  # nothing beside the weights
    with pytest.raises(ConfigError, match=r"not CLIP; load it with load_model"):
        load_clip(tmp_path)


def test_bf16_stays_close_to_fp32(tmp_path):
    folder = _small_folder(tmp_path)
    fp32 = load_model(folder)
    bf16 = load_model(folder, dtype=torch.bfloat16)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a = fp32.encode_image(pixels)
        b = bf16.encode_image(pixels).float()
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_input_shapes_are_checked(tmp_path):
    ours = load_model(_small_folder(tmp_path))
    with pytest.raises(ConfigError, match="32, 32"):
        ours.encode_image(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ConfigError, match="L<=64"):
        ours.encode_text(torch.zeros(1, 65, dtype=torch.long))


# --- hostile files ------------------------------------------------------------------------


def test_missing_and_extra_keys_are_named(tmp_path):
    folder = _small_folder(tmp_path)
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    del sd["vision_model.head.mlp.fc2.bias"]
    sd["vision_model.head.surprise"] = torch.zeros(3)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(StateDictMismatch) as err:
        load_model(folder)
    assert "vision_model.head.mlp.fc2.bias" in str(err.value)
    assert "vision_model.head.surprise" in str(err.value)


def test_wrong_shapes_are_named(tmp_path):
    folder = _small_folder(tmp_path)
    from safetensors.torch import load_file

    sd = load_file(str(folder / "model.safetensors"))
    sd["text_model.head.bias"] = torch.zeros(5)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(StateDictMismatch, match=r"text_model.head.bias.*\(5,\)"):
        load_model(folder)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"vision_config": {"num_attention_heads": "twelve"}}, "num_attention_heads"),
        ({"vision_config": {"num_attention_heads": 5}}, "divisible"),
        ({"text_config": {"hidden_act": "relu"}}, "hidden_act"),
        ({"text_config": {"layer_norm_eps": -1}}, "layer_norm_eps"),
    ],
)
def test_bad_config_json_is_a_clear_error(tmp_path, patch, message):
    folder = _small_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    for section, values in patch.items():
        cfg[section].update(values)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((WeightsFormatError, ConfigError), match=message):
        load_model(folder)


def test_config_json_that_is_not_json(tmp_path):
    folder = _small_folder(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsFormatError, match="config"):
        load_model(folder)


def test_truncated_weights_file(tmp_path):
    folder = _small_folder(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFormatError):
        load_model(folder)


def test_huge_header_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{")
    with pytest.raises(WeightsFormatError):
        load_model(path)


def test_fixed_resolution_checkpoint_refuses_another_size(tmp_path):
    folder = _small_folder(tmp_path)
    with pytest.raises(WeightsFormatError, match="32 px"):
        load_model(folder, image_size=48)


def test_is_siglip_state_dict():
    assert is_siglip_state_dict(["vision_model.head.probe", "x"])
    assert is_siglip_state_dict(["visual.trunk.attn_pool.latent"])
    assert not is_siglip_state_dict(["vision_model.post_layernorm.weight", "visual.proj"])


def test_save_and_load_round_trip_with_transformers_reading_it(tmp_path):
    """A random-weight SigLIP written by save_siglip is a SiglipModel folder: we and
    transformers read the same model from it."""
    from pipeline.models.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
    from pipeline.models.siglip_formats import save_siglip

    config = SiglipConfig(
        vision=SiglipVisionConfig(
            image_size=32, patch_size=8, width=64, layers=2, heads=4, mlp_width=96
        ),
        text=SiglipTextConfig(
            vocab_size=300, width=64, layers=2, heads=4, mlp_width=96, embed_dim=64
        ),
        family="siglip2",
    )
    model = SigLIP(config)
    model.init_weights(torch.Generator().manual_seed(3))
    save_siglip(model, tmp_path)
    again = load_model(tmp_path)
    hf = transformers.SiglipModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 32, 32)
    tokens = _tokens(300, n=2)
    with torch.no_grad():
        assert torch.equal(again.encode_image(pixels), model.encode_image(pixels))
        assert torch.equal(again(pixels, tokens)[0], model(pixels, tokens)[0])
        ref = _features(hf.get_text_features(input_ids=tokens))
        assert _rel_err(again.encode_text(tokens), ref) < _TOL


def test_folder_without_weights_names_the_files(tmp_path):
    from pipeline.errors import WeightsNotFound

    with pytest.raises(WeightsNotFound, match=r"model\.safetensors"):
        load_model(tmp_path)
