"""Reading CLIP weights files into a state dict in OpenAI's layout.

Formats understood, told apart by content, never by trusting the file name alone:

- OpenAI's TorchScript archives (the released ``.pt`` files): a zip holding ``code/`` and
  ``constants.pkl``. Reading one runs the code inside it, so only an archive whose SHA-256 the
  registry publishes is read; any other is refused (:mod:`pipeline.models.torchfiles`).
  Downloads convert them to safetensors, which is what workers load.
- Plain PyTorch state dicts (``torch.save(model.state_dict())``), loaded with
  ``weights_only=True`` only; a ``{"state_dict": ...}`` wrapper and a ``module.`` prefix
  (open_clip training checkpoints) are unwrapped.
- safetensors: OpenAI-layout keys (open_clip's ``open_clip_model.safetensors``, our demo model),
  or Hugging Face ``CLIPModel`` keys (``model.safetensors``), mapped onto ours. A
  ``config.json`` beside a Hugging Face file supplies head counts and the activation; an
  ``open_clip_config.json`` beside an open_clip file supplies head counts, activation and pixel
  statistics (:mod:`pipeline.models.openclip`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import WeightsFormatError, WeightsNotFound
from pipeline.models.configs import Activation
from pipeline.models.openclip import CONFIG_NAME, read_open_clip_config, vision_heads_for_width
from pipeline.models.torchfiles import is_torchscript, read_archive, read_pickled

__all__ = [
    "RawWeights",
    "WeightsFile",
    "from_hf_state_dict",
    "read_state_dict",
    "read_weights",
    "to_hf_state_dict",
    "weights_from_raw",
]


@dataclass
class WeightsFile:
    state_dict: dict[str, torch.Tensor]  # OpenAI-layout keys
    format: str  # "openai-torchscript", "state-dict", "safetensors", "hf-safetensors", ...
    vision_heads: int | None = None  # from a Hugging Face config, when one was found
    text_heads: int | None = None
    activation: Activation = "quick_gelu"
    image_mean: tuple[float, float, float] | None = None  # from an open_clip config, if any
    image_std: tuple[float, float, float] | None = None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # open_clip training checkpoint
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFormatError(f"{path}: the file holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items()}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


_HF_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
_HF_LAYER_PARTS = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_HF_TRANSPOSED = {
    "text_projection.weight": "text_projection",
    "visual_projection.weight": "visual.proj",
}


def _is_hf(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("text_model.", "vision_model.")) for k in sd)


def from_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a Hugging Face ``CLIPModel`` state dict onto OpenAI's keys.

    Linear projections are stored transposed by Hugging Face; q, k and v are separate there
    and one stacked ``in_proj`` here. Unknown keys are kept as they are, so strict loading
    reports them."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue  # a buffer of 0..n-1, not a weight
        if key in _HF_FIXED:
            out[_HF_FIXED[key]] = value
            continue
        if key in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[key]] = value.t().contiguous()
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        tower, layer, rest = m.groups()
        prefix = (
            f"transformer.resblocks.{layer}."
            if tower == "text"
            else (f"visual.transformer.resblocks.{layer}.")
        )
        proj = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if proj is not None:
            qkv.setdefault((prefix, proj.group(2), tower), {})[proj.group(1)] = value
            continue
        module, _, param = rest.rpartition(".")
        if module in _HF_LAYER_PARTS:
            out[f"{prefix}{_HF_LAYER_PARTS[module]}.{param}"] = value
        else:
            out[key] = value
    for (prefix, param, _tower), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsFormatError(f"{prefix}: q/k/v projections incomplete: {sorted(parts)}")
        out[f"{prefix}attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def to_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_hf_state_dict` for ViT models (used to export and test)."""
    fixed = {v: k for k, v in _HF_FIXED.items()}
    transposed = {v: k for k, v in _HF_TRANSPOSED.items()}
    parts = {v: k for k, v in _HF_LAYER_PARTS.items()}
    out: dict[str, torch.Tensor] = {}
    layer = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
    for key, value in sd.items():
        if key in fixed:
            out[fixed[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        elif (m := layer.match(key)) is not None:
            tower = "vision_model" if m.group(1) else "text_model"
            prefix = f"{tower}.encoder.layers.{m.group(2)}."
            module, _, param = m.group(3).rpartition(".")
            if m.group(3).startswith("attn.in_proj_"):
                param = m.group(3).removeprefix("attn.in_proj_")
                for name, chunk in zip("qkv", value.chunk(3), strict=True):
                    out[f"{prefix}self_attn.{name}_proj.{param}"] = chunk.contiguous()
            else:
                out[f"{prefix}{parts[module]}.{param}"] = value
        else:
            raise WeightsFormatError(f"{key}: no Hugging Face equivalent (ViT models only)")
    return out


def _hf_config(path: Path) -> tuple[int | None, int | None, Activation]:
    cfg_path = path.with_name("config.json")
    if not cfg_path.is_file():
        return None, None, "quick_gelu"
    try:
        cfg = json.loads(cfg_path.read_text())
        vision = cfg.get("vision_config", {})
        text = cfg.get("text_config", {})
        act = text.get("hidden_act", "quick_gelu")
    except (OSError, ValueError, AttributeError) as e:
        raise WeightsFormatError(f"{cfg_path}: unreadable Hugging Face config: {e}") from e
    if act not in ("quick_gelu", "gelu"):
        raise WeightsFormatError(f"{cfg_path}: hidden_act {act!r} is not supported")
    return vision.get("num_attention_heads"), text.get("num_attention_heads"), act


@dataclass
class RawWeights:
    state_dict: dict[str, torch.Tensor]  # the file's own keys (wrappers and prefixes removed)
    format: str  # "safetensors", "openai-torchscript" or "state-dict"
    metadata: dict[str, str]  # safetensors string metadata ({} for other formats)
    archive_sha256: str | None = None  # a TorchScript archive's SHA-256 (a registry digest)


def read_state_dict(path: str | Path) -> RawWeights:
    """Read any supported weights file into tensors on the CPU, keys as the file has them.

    Model-family code maps the keys (CLIP: :func:`read_weights`; SigLIP:
    :mod:`pipeline.models.siglip_formats`). A TorchScript archive is read only when its SHA-256
    is a registry digest (else :class:`~pipeline.errors.UntrustedWeights`), a pickle only with
    ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(f"no weights file at {path}")
    digest: str | None = None
    meta: dict[str, str] = {}
    try:
        if _is_safetensors(path):
            sd, meta = _read_safetensors(path)
            fmt = "safetensors"
        elif is_torchscript(path):
            archive, digest = read_archive(path)
            sd = {k: v.detach().clone() for k, v in archive.state_dict().items()}
            fmt = "openai-torchscript"
        else:
            sd = _unwrap(read_pickled(path), path)
            fmt = "state-dict"
    except (WeightsFormatError, WeightsNotFound):
        raise
    except Exception as e:  # torch and safetensors raise many types for a bad file
        raise WeightsFormatError(
            f"{path}: not a readable weights file (TorchScript archive, PyTorch state "
            f"dict or safetensors): {type(e).__name__}: {e}"
        ) from e
    return RawWeights(
        state_dict=_unwrap(sd, path), format=fmt, metadata=meta, archive_sha256=digest
    )


def read_weights(path: str | Path) -> WeightsFile:
    """Read a CLIP weights file of any supported format into OpenAI-layout tensors (on the
    CPU)."""
    path = Path(path)
    raw = read_state_dict(path)
    return weights_from_raw(raw, path)


def weights_from_raw(raw: RawWeights, path: Path) -> WeightsFile:
    """:func:`read_weights` on a file already read by :func:`read_state_dict`."""
    sd, fmt, meta = raw.state_dict, raw.format, raw.metadata
    if _is_hf(sd):
        vision_heads, text_heads, hf_act = _hf_config(path)
        return WeightsFile(
            state_dict=from_hf_state_dict(sd),
            format=f"hf-{fmt}",
            vision_heads=vision_heads,
            text_heads=text_heads,
            activation=hf_act,
        )
    oc_config = path.with_name(CONFIG_NAME)
    if oc_config.is_file():  # open_clip's Hugging Face layout: model_cfg and preprocess_cfg
        spec = read_open_clip_config(oc_config)
        return WeightsFile(
            state_dict=sd,
            format=f"open_clip-{fmt}",
            vision_heads=spec.vision_heads,
            text_heads=spec.text_heads,
            activation=spec.activation,
            image_mean=spec.mean,
            image_std=spec.std,
        )
    act: Activation = "quick_gelu"
    if "clip.activation" in meta:
        if meta["clip.activation"] not in ("quick_gelu", "gelu"):
            raise WeightsFormatError(f"{path}: metadata names an unknown activation")
        act = "gelu" if meta["clip.activation"] == "gelu" else "quick_gelu"
    vision_heads = _int_or_none(meta.get("clip.vision_heads"))
    conv = sd.get("visual.conv1.weight")
    if vision_heads is None and conv is not None and "visual.proj" in sd:
        vision_heads = vision_heads_for_width(conv.shape[0])  # open_clip's ViT-H/g/bigG/e
    return WeightsFile(
        state_dict=sd,
        format=fmt,
        vision_heads=vision_heads,
        text_heads=_int_or_none(meta.get("clip.text_heads")),
        activation=act,
    )


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata (``clip.vision_heads``, ``clip.text_heads``,
    ``clip.activation`` override what the shapes imply)."""
    from safetensors import safe_open

    sd: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        meta = dict(fh.metadata() or {})
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a Mapping)
            sd[key] = fh.get_tensor(key)
    return sd, meta


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length and a JSON header."""
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        first = fh.read(1)
    return 1 < n < 100_000_000 and first == b"{"
