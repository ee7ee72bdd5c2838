"""open_clip's plain-CLIP checkpoints: what the weights do not say, from the config or a table.

LAION-2B, DataComp, DFN and MetaCLIP checkpoints of open_clip's plain CLIP architecture have
OpenAI's keys, so :mod:`pipeline.models.model` loads them, but they vary in ways the tensor
shapes do not show:

- activation: GELU for open_clip's own trainings (LAION, DataComp); QuickGELU for OpenAI's, and
  for the ``-quickgelu`` configs that DFN and MetaCLIP use;
- attention heads: open_clip sets a head *width* (64 for B and L, 80 for ViT-H/14, 88 for
  ViT-g/14, 104 for ViT-bigG/14, 112 for ViT-e/14), so ``width // 64`` is wrong for the big
  towers;
- pixel mean and std (OpenAI's, or 0.5 for some);
- MLP width (bigG and g are not 4 x width): read off the weights by the model code.

An ``open_clip_config.json`` beside the weights (what open_clip publishes with every Hugging Face
checkpoint: ``model_cfg`` and ``preprocess_cfg``) says all of this. Without one, the head width
comes from :data:`HEAD_WIDTH_BY_WIDTH` and the activation must come from the caller (the
registry knows it for each entry); the default stays OpenAI's QuickGELU.

Configs asking for anything else (a timm or Hugging Face tower, attention pooling, average
pooling, another text pooling or no causal mask, layer scale, extra norms) are refused with the
feature named, rather than loaded into a model that would compute something else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import WeightsFormatError
from pipeline.models.configs import OPENAI_MEAN, OPENAI_STD, Activation

__all__ = [
    "CONFIG_NAME",
    "HEAD_WIDTH_BY_WIDTH",
    "OpenClipSpec",
    "read_open_clip_config",
    "vision_heads_for_width",
]

CONFIG_NAME = "open_clip_config.json"

#: open_clip's image-tower head width by tower width, where it is not 64 (ViT-H/14, ViT-g/14,
#: ViT-bigG/14, ViT-e/14). OpenAI's towers (768, 1024) use 64.
HEAD_WIDTH_BY_WIDTH = {1280: 80, 1408: 88, 1664: 104, 1792: 112}

_MAX_CONFIG_BYTES = 1 << 20

# Keys whose value does not change inference, or that this reader uses itself.
_VISION_USED = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"}
_TEXT_USED = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_HARMLESS = {
    "patch_dropout",  # training only
    "output_tokens",
    "attn_pooler_queries",  # only with attentional_pool
    "attn_pooler_heads",
    "timm_model_pretrained",
    "timm_pool",  # only with timm_model_name
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
    "timm_model_kwargs",
    "image_seq_len",
    "hf_proj_type",
    "hf_pooler_type",
    "tokenizer_mode",
    "tokenizer_type",
    "tiktoken_name",
    "variable_text",
    "embed_cls",  # CoCa only
    # the "modern" text tower's settings, refused below through text_arch
    "attention_mode",
    "pos_embed",
    "rope_temperature",
    "mlp_type",
    "norm_type",
    "norm_eps",
    "attn_gated",
    "pre_norm",
    "norm_placement",
    "zero_init_residual",
    "reg_tokens",
    "value_residual",
}
# Features that change the computation, with the value plain CLIP has.
_PLAIN = {
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": None,  # "tok" for images, "argmax" for text: checked per tower
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "timm_model_name": None,
    "hf_model_name": None,
    "hf_model_pretrained": None,
    "hf_tokenizer_name": None,
    "tokenizer_kwargs": None,
    "input_patchnorm": False,
    "global_average_pool": False,
    "no_causal_mask": False,
    "proj_bias": False,
    "proj_type": "linear",
    "pad_id": 0,
    "bos_id": None,
    "eos_id": None,
    "text_arch": "clip",
}
_TOP_HARMLESS = {"embed_dim", "quick_gelu", "cast_dtype", "init_logit_scale", "vision_cfg"}
_TOP_PLAIN = {"custom_text": False, "init_logit_bias": None, "nonscalar_logit_scale": False}


@dataclass(frozen=True)
class OpenClipSpec:
    """What an open_clip config says that the weights do not."""

    vision_heads: int  # image-tower attention heads
    text_heads: int  # text-tower attention heads
    activation: Activation  # "gelu" or "quick_gelu"
    mean: tuple[float, float, float]  # pixel mean (RGB, on [0, 1] values)
    std: tuple[float, float, float]  # pixel std
    image_size: int  # square input side the checkpoint was trained at


def vision_heads_for_width(width: int) -> int:
    """open_clip's head count for a ViT image tower of this width (64-wide heads otherwise)."""
    return max(1, width // HEAD_WIDTH_BY_WIDTH.get(width, 64))


def _unsupported(path: Path, where: str, key: str, value: object) -> WeightsFormatError:
    return WeightsFormatError(
        f"{path}: open_clip feature {where}.{key}={value!r} is not supported (clipguard loads "
        "open_clip's plain CLIP architecture: OpenAI's layers with GELU or QuickGELU, any "
        "widths and head counts)"
    )


def _check_tower(cfg: Mapping[str, Any], used: set[str], where: str, path: Path) -> None:
    pool_default = "tok" if where == "vision_cfg" else "argmax"
    for key, value in cfg.items():
        if key in used or key in _HARMLESS:
            continue
        if key == "pool_type":
            if value != pool_default:
                raise _unsupported(path, where, key, value)
            continue
        if key not in _PLAIN:
            raise _unsupported(path, where, key, value)
        plain = _PLAIN[key]
        if value != plain and not (plain is None and value in ({}, "default")):
            raise _unsupported(path, where, key, value)


def _int(cfg: Mapping[str, Any], key: str, default: int, path: Path) -> int:
    value = cfg.get(key, default)
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        value = value[0]  # a square image size written as [h, w]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 100_000:
        raise WeightsFormatError(f"{path}: {key} must be a positive integer, not {value!r}")
    return value


def _rgb(
    value: object, default: tuple[float, float, float], key: str, path: Path
) -> tuple[float, float, float]:
    if value is None:
        return default
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        r, g, b = (float(v) for v in value)
        if key == "std" and min(r, g, b) <= 0:
            raise WeightsFormatError(f"{path}: preprocess_cfg.std must be positive: {value!r}")
        return (r, g, b)
    raise WeightsFormatError(f"{path}: preprocess_cfg.{key} must be three numbers, not {value!r}")


def read_open_clip_config(path: Path) -> OpenClipSpec:
    """Read an ``open_clip_config.json`` (bounded, validated); refuse features it cannot run."""
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise WeightsFormatError(f"{path}: over {_MAX_CONFIG_BYTES} bytes")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsFormatError(f"{path}: unreadable open_clip config: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("model_cfg"), dict):
        raise WeightsFormatError(f"{path}: an open_clip config needs a model_cfg object")
    model_cfg: dict[str, Any] = doc["model_cfg"]
    vision = model_cfg.get("vision_cfg", {})
    text = model_cfg.get("text_cfg", {})
    pre = doc.get("preprocess_cfg", {})
    if not isinstance(vision, dict) or not isinstance(text, dict) or not isinstance(pre, dict):
        raise WeightsFormatError(f"{path}: vision_cfg, text_cfg and preprocess_cfg are objects")
    for key, value in model_cfg.items():
        if key == "text_cfg" or key in _TOP_HARMLESS:
            continue
        if _TOP_PLAIN.get(key, object()) != value:
            raise _unsupported(path, "model_cfg", key, value)
    if isinstance(vision.get("layers"), list):
        raise _unsupported(path, "vision_cfg", "layers", vision["layers"])  # a ResNet tower
    _check_tower(vision, _VISION_USED, "vision_cfg", path)
    _check_tower(text, _TEXT_USED, "text_cfg", path)
    width = _int(vision, "width", 768, path)
    head_width = _int(vision, "head_width", 64, path)
    if width % head_width:
        raise WeightsFormatError(f"{path}: vision width {width} is not a multiple of {head_width}")
    quick = model_cfg.get("quick_gelu", False)
    if not isinstance(quick, bool):
        raise WeightsFormatError(f"{path}: quick_gelu must be true or false, not {quick!r}")
    return OpenClipSpec(
        vision_heads=width // head_width,
        text_heads=_int(text, "heads", 8, path),
        activation="quick_gelu" if quick else "gelu",
        mean=_rgb(pre.get("mean"), OPENAI_MEAN, "mean", path),
        std=_rgb(pre.get("std"), OPENAI_STD, "std", path),
        image_size=_int(vision, "image_size", 224, path),
    )
