"""SigLIP weights files to a :class:`~pipeline.models.siglip.SigLIP` model.

Layouts understood (told apart by their keys):

- Hugging Face ``SiglipModel`` (``model.safetensors`` of every SigLIP and fixed-resolution
  SigLIP 2 checkpoint): our own keys, loaded as they are.
- Hugging Face ``Siglip2Model`` (the NaFlex checkpoints): the same keys, but the patch
  embedding is a linear layer over flattened ``(row, column, channel)`` patches and the
  position embeddings are a grid resized to each image. Loaded as a fixed-resolution model:
  the linear weights become the equivalent convolution, and the grid is resized once, as
  ``transformers`` does per image (bilinear, antialiased), to the resolution asked for
  (default: the grid's own, e.g. 16 x 16 patches of 16 px = 256 px).
- open_clip / timm (``open_clip_model.safetensors`` of the ``timm/ViT-*-SigLIP*`` repositories):
  ``visual.trunk.*`` (a timm ViT with an attention-pool head) and ``text.*`` (open_clip's text
  transformer), mapped onto our keys. timm and open_clip run some of these towers with exact
  GELU; the weights were trained with the tanh approximation (big_vision), which is what
  this model runs whatever the file's layout.

Sizes come from the tensors' shapes; head counts and LayerNorm epsilon from a ``config.json``
beside the file when there is one, else from a table of the released widths. The tokenizer
files beside the weights are loaded with the model (:mod:`pipeline.models.text_tokenizers`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.errors import StateDictMismatch, TokenizerError, WeightsFormatError
from pipeline.models.configs import (
    SiglipConfig,
    SiglipFamily,
    SiglipTextConfig,
    SiglipVisionConfig,
)
from pipeline.models.siglip import SigLIP
from pipeline.models.skeleton import skeleton
from pipeline.models.text_tokenizers import load_text_tokenizer

__all__ = [
    "SiglipWeights",
    "build_siglip",
    "from_open_clip_state_dict",
    "is_siglip_state_dict",
    "save_siglip",
    "siglip_config_from_state_dict",
    "siglip_weights",
]

_log = logging.getLogger(__name__)

#: Attention heads of the released towers by width (not derivable from the weights):
#: B 768/12, L 1024/16, So400m 1152/16, g-opt 1536/16.
_HEADS_BY_WIDTH = {768: 12, 1024: 16, 1152: 16, 1536: 16}
#: Gemma's vocabulary: a checkpoint whose text tower has it is SigLIP 2.
_GEMMA_VOCAB = 256_000
#: Largest config.json read.
_MAX_CONFIG_BYTES = 1 << 20
#: Activations that mean tanh-approximated GELU in a Hugging Face config.
_TANH_GELU = frozenset({"gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu_tanh"})

_HF_PROBE = "vision_model.head.probe"
_OPEN_CLIP_PROBE = "visual.trunk.attn_pool.latent"
_PATCH = "vision_model.embeddings.patch_embedding.weight"
_POSITIONS = "vision_model.embeddings.position_embedding.weight"


@dataclass
class SiglipWeights:
    state_dict: dict[str, torch.Tensor]  # our (Hugging Face SiglipModel) keys
    config: SiglipConfig  # architecture read off the shapes (and config.json)
    format: str  # "hf-siglip", "hf-siglip2-naflex" or "open_clip"


def is_siglip_state_dict(keys: Mapping[str, object] | list[str]) -> bool:
    """Whether a state dict's keys are a SigLIP model's (any supported layout)."""
    names = set(keys)
    return _HF_PROBE in names or _OPEN_CLIP_PROBE in names


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise WeightsFormatError(f"{path}: over {_MAX_CONFIG_BYTES} bytes")
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsFormatError(f"{path}: unreadable config: {e}") from e
    if not isinstance(cfg, dict):
        raise WeightsFormatError(f"{path}: not a JSON object")
    return cfg


def _open_clip_heads(path: Path) -> dict[str, Any] | None:
    """The text tower's head count from an ``open_clip_config.json``, in ``config.json``'s
    shape (the image tower's comes from its timm model name, i.e. the width table)."""
    cfg = _read_json(path)
    heads = _sub(_sub(cfg, "model_cfg"), "text_cfg").get("heads")
    return None if heads is None else {"text_config": {"num_attention_heads": heads}}


def _sub(cfg: Mapping[str, Any] | None, key: str) -> Mapping[str, Any]:
    value = (cfg or {}).get(key)
    return value if isinstance(value, Mapping) else {}


def _int_field(section: Mapping[str, Any], key: str, path: str) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1_000_000:
        raise WeightsFormatError(f"{path}: {key} must be a positive integer, not {value!r}")
    return value


def _eps(section: Mapping[str, Any], path: str) -> float:
    value = section.get("layer_norm_eps", 1e-6)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise WeightsFormatError(f"{path}: layer_norm_eps must be in (0, 1), not {value!r}")
    return float(value)


def _check_activation(section: Mapping[str, Any], path: str) -> None:
    act = section.get("hidden_act", "gelu_pytorch_tanh")
    if act not in _TANH_GELU:
        raise WeightsFormatError(
            f"{path}: hidden_act {act!r} is not supported (SigLIP uses tanh-approximated GELU)"
        )


def _count(keys: list[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def _heads(width: int, override: int | None) -> int:
    return override or _HEADS_BY_WIDTH.get(width) or max(1, width // 64)


def siglip_config_from_state_dict(
    sd: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any] | None = None, *, source: str = ""
) -> SiglipConfig:
    """The architecture of a state dict in our keys; ``hf_config`` (a ``config.json``) gives
    head counts and LayerNorm epsilon, which the shapes do not."""
    keys = list(sd)
    vis_cfg, txt_cfg = _sub(hf_config, "vision_config"), _sub(hf_config, "text_config")
    where = source or "config.json"
    _check_activation(vis_cfg, where)
    _check_activation(txt_cfg, where)
    try:
        patch = sd[_PATCH]
        width, patch_size = patch.shape[0], patch.shape[-1]
        grid = math.isqrt(sd[_POSITIONS].shape[0])
        if grid * grid != sd[_POSITIONS].shape[0]:
            raise WeightsFormatError(f"{source}: {sd[_POSITIONS].shape[0]} positions is not a grid")
        size = _int_field(vis_cfg, "image_size", where)
        if size is None or size // patch_size != grid:
            size = grid * patch_size  # no config, or one that does not fit the weights
        vision = SiglipVisionConfig(
            image_size=size,
            patch_size=patch_size,
            width=width,
            layers=_count(keys, "vision_model.encoder.layers."),
            heads=_heads(width, _int_field(vis_cfg, "num_attention_heads", where)),
            mlp_width=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            eps=_eps(vis_cfg, where),
        )
        tok = sd["text_model.embeddings.token_embedding.weight"]
        text_width = tok.shape[1]
        text = SiglipTextConfig(
            context_length=sd["text_model.embeddings.position_embedding.weight"].shape[0],
            vocab_size=tok.shape[0],
            width=text_width,
            layers=_count(keys, "text_model.encoder.layers."),
            heads=_heads(text_width, _int_field(txt_cfg, "num_attention_heads", where)),
            mlp_width=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            embed_dim=sd["text_model.head.weight"].shape[0],
            eps=_eps(txt_cfg, where),
        )
    except KeyError as e:
        raise StateDictMismatch(
            f"{source}: not a SigLIP state dict: key {e.args[0]!r} is missing",
            missing=[str(e.args[0])],
            unexpected=[],
        ) from e
    family: SiglipFamily = "siglip2" if text.vocab_size == _GEMMA_VOCAB else "siglip"
    return SiglipConfig(vision=vision, text=text, family=family)


def _split_qkv(prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for name, w, b in zip("qkv", weight.chunk(3), bias.chunk(3), strict=True):
        out[f"{prefix}{name}_proj.weight"] = w.contiguous()
        out[f"{prefix}{name}_proj.bias"] = b.contiguous()
    return out


_OC_FIXED = {
    "visual.trunk.patch_embed.proj.weight": _PATCH,
    "visual.trunk.patch_embed.proj.bias": "vision_model.embeddings.patch_embedding.bias",
    "visual.trunk.norm.weight": "vision_model.post_layernorm.weight",
    "visual.trunk.norm.bias": "vision_model.post_layernorm.bias",
    "visual.trunk.attn_pool.latent": _HF_PROBE,
    "visual.trunk.attn_pool.proj.weight": "vision_model.head.attention.out_proj.weight",
    "visual.trunk.attn_pool.proj.bias": "vision_model.head.attention.out_proj.bias",
    "visual.trunk.attn_pool.norm.weight": "vision_model.head.layernorm.weight",
    "visual.trunk.attn_pool.norm.bias": "vision_model.head.layernorm.bias",
    "visual.trunk.attn_pool.mlp.fc1.weight": "vision_model.head.mlp.fc1.weight",
    "visual.trunk.attn_pool.mlp.fc1.bias": "vision_model.head.mlp.fc1.bias",
    "visual.trunk.attn_pool.mlp.fc2.weight": "vision_model.head.mlp.fc2.weight",
    "visual.trunk.attn_pool.mlp.fc2.bias": "vision_model.head.mlp.fc2.bias",
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "text.ln_final.weight": "text_model.final_layer_norm.weight",
    "text.ln_final.bias": "text_model.final_layer_norm.bias",
    "text.text_projection.weight": "text_model.head.weight",
    "text.text_projection.bias": "text_model.head.bias",
}
_OC_BLOCK = re.compile(r"^(visual\.trunk\.blocks|text\.transformer\.resblocks)\.(\d+)\.(.+)$")
#: Fused q/k/v weights (timm, open_clip) and the bias that goes with each.
_FUSED_QKV = {
    "attn.qkv.weight": "attn.qkv.bias",
    "attn.qkv.bias": "",
    "attn.in_proj_weight": "attn.in_proj_bias",
    "attn.in_proj_bias": "",
}
_OC_BLOCK_PARTS = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.proj": "self_attn.out_proj",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def from_open_clip_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an open_clip/timm SigLIP state dict onto our keys. Unknown keys are kept as they
    are, so strict loading names them."""
    out: dict[str, torch.Tensor] = {}
    pool_q: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _OC_FIXED:
            out[_OC_FIXED[key]] = value
        elif key == "visual.trunk.pos_embed":
            out[_POSITIONS] = value.reshape(value.shape[-2], value.shape[-1])  # (1, N, D) -> (N, D)
        elif key in ("logit_scale", "logit_bias"):
            out[key] = value.reshape(1)
        elif key.startswith("visual.trunk.attn_pool.") and key.rsplit(".", 2)[-2] in ("q", "kv"):
            pool_q[key.removeprefix("visual.trunk.attn_pool.")] = value
        elif (m := _OC_BLOCK.match(key)) is not None:
            if m.group(3) in _FUSED_QKV:
                continue  # split below, once weight and bias are both at hand
            tower = "vision_model" if m.group(1).startswith("visual") else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}."
            module, _, param = m.group(3).rpartition(".")
            part = _OC_BLOCK_PARTS.get(module)
            out[f"{prefix}{part}.{param}" if part else key] = value
        else:
            out[key] = value
    for key, value in sd.items():
        m = _OC_BLOCK.match(key)
        if m is None or m.group(3) not in _FUSED_QKV or "bias" in m.group(3):
            continue
        tower = "vision_model" if m.group(1).startswith("visual") else "text_model"
        bias_key = f"{m.group(1)}.{m.group(2)}.{_FUSED_QKV[m.group(3)]}"
        if bias_key not in sd:
            raise WeightsFormatError(f"{key} has no bias {bias_key}")
        out.update(
            _split_qkv(f"{tower}.encoder.layers.{m.group(2)}.self_attn.", value, sd[bias_key])
        )
    if pool_q:
        try:
            out["vision_model.head.attention.in_proj_weight"] = torch.cat(
                [pool_q["q.weight"], pool_q["kv.weight"]]
            )
            out["vision_model.head.attention.in_proj_bias"] = torch.cat(
                [pool_q["q.bias"], pool_q["kv.bias"]]
            )
        except KeyError as e:
            raise WeightsFormatError(f"attention pool: {e.args[0]} is missing") from e
    return out


def _naflex_to_fixed(
    sd: dict[str, torch.Tensor], *, patch_size: int, image_size: int | None, source: str
) -> None:
    """In place: a ``Siglip2Model`` linear patch embedding and position grid, as the
    convolution and position table of a fixed-resolution model."""
    linear = sd[_PATCH]  # (D, P*P*3): patches flattened as (row, column, channel)
    width = linear.shape[0]
    if linear.shape[1] != patch_size * patch_size * 3:
        raise WeightsFormatError(
            f"{source}: patch embedding takes {linear.shape[1]} inputs, not 3 x {patch_size}^2"
        )
    conv = linear.view(width, patch_size, patch_size, 3).permute(0, 3, 1, 2)  # (D, 3, P, P)
    sd[_PATCH] = conv.contiguous()
    table = sd[_POSITIONS]
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise WeightsFormatError(f"{source}: {table.shape[0]} positions is not a square grid")
    size = image_size or side * patch_size
    if size % patch_size:
        raise WeightsFormatError(f"{source}: {size} px is not a multiple of {patch_size} px")
    grid = size // patch_size
    if grid != side:
        pos = table.float().reshape(side, side, width).permute(2, 0, 1)[None]  # (1, D, s, s)
        pos = F.interpolate(
            pos, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True
        )
        table = pos[0].permute(1, 2, 0).reshape(grid * grid, width).to(table.dtype)  # (g*g, D)
    sd[_POSITIONS] = table


def siglip_weights(
    raw: Mapping[str, torch.Tensor], path: Path, *, image_size: int | None = None
) -> SiglipWeights:
    """A SigLIP state dict read from ``path`` (any layout), in our keys, with its config."""
    source = str(path)
    sd = {k: v for k, v in raw.items() if not k.endswith("position_ids")}
    hf_config = _read_json(path.with_name("config.json"))
    fmt = "hf-siglip"
    if _OPEN_CLIP_PROBE in sd:
        sd = from_open_clip_state_dict(sd)
        fmt = "open_clip"
        hf_config = _open_clip_heads(path.with_name("open_clip_config.json"))
    if _PATCH in sd and sd[_PATCH].ndim == 2:  # Siglip2Model (NaFlex): linear patch embedding
        patch = _int_field(_sub(hf_config, "vision_config"), "patch_size", source)
        patch = patch or math.isqrt(sd[_PATCH].shape[1] // 3)
        _naflex_to_fixed(sd, patch_size=patch, image_size=image_size, source=source)
        fmt = "hf-siglip2-naflex"
    config = siglip_config_from_state_dict(sd, hf_config, source=source)
    if image_size is not None and image_size != config.vision.image_size:
        raise WeightsFormatError(
            f"{source}: a fixed-resolution checkpoint runs at {config.vision.image_size} px, "
            f"not {image_size}"
        )
    return SiglipWeights(state_dict=sd, config=config, format=fmt)


def _check_keys(model: SigLIP, sd: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in sd)
    unexpected = sorted(k for k in sd if k not in expected)
    wrong = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if wrong:
            parts.append(f"shape mismatches ({len(wrong)}): {'; '.join(wrong[:10])}")
        raise StateDictMismatch(
            f"{source}: the state dict does not fit the SigLIP architecture read off its "
            "shapes: " + " | ".join(parts),
            missing=missing,
            unexpected=unexpected,
        )


def build_siglip(
    weights: SiglipWeights,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    tokenizer_dir: Path | None = None,
    source: str = "",
) -> SigLIP:
    """Instantiate SigLIP for ``weights``, load them strictly, and return it on ``device`` in
    ``dtype``, in eval mode, without grads, with the tokenizer found in ``tokenizer_dir``."""
    with skeleton():
        model = SigLIP(weights.config)
    _check_keys(model, weights.state_dict, source)
    model.load_state_dict(weights.state_dict, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    if tokenizer_dir is not None:
        try:
            model.text_tokenizer = load_text_tokenizer(
                tokenizer_dir, family=weights.config.family, context_length=model.context_length
            )
        except TokenizerError as e:
            _log.warning("%s: %s; model.tokenize() will fail until one is attached", source, e)
    return model


def save_siglip(model: SigLIP, folder: str | Path) -> Path:
    """Write ``model`` as a Hugging Face ``SiglipModel`` folder (``model.safetensors`` and
    ``config.json``), which :func:`~pipeline.models.loading.load_model` reads back. Tokenizer
    files are not written: copy the checkpoint's beside it."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    v, t = model.config.vision, model.config.text
    config = {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "vision_config": {
            "hidden_size": v.width,
            "intermediate_size": v.mlp_width,
            "num_attention_heads": v.heads,
            "num_hidden_layers": v.layers,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "layer_norm_eps": v.eps,
            "hidden_act": "gelu_pytorch_tanh",
        },
        "text_config": {
            "hidden_size": t.width,
            "intermediate_size": t.mlp_width,
            "num_attention_heads": t.heads,
            "num_hidden_layers": t.layers,
            "vocab_size": t.vocab_size,
            "max_position_embeddings": t.context_length,
            "projection_size": t.embed_dim,
            "layer_norm_eps": t.eps,
            "hidden_act": "gelu_pytorch_tanh",
        },
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder / "model.safetensors"
