"""``load_clip``: a registry name or a weights file in, a ready CLIP model out."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch

from pipeline.errors import ConfigError, WeightsNotFound
from pipeline.models.formats import read_weights
from pipeline.models.model import CLIP, build_model, config_from_state_dict
from pipeline.models.registry import (
    DEMO_NOTICE,
    ModelInfo,
    list_models,
    resolve_weights,
)

__all__ = ["load_clip", "save_clip"]

_log = logging.getLogger(__name__)


def _locate(name_or_path: str | Path) -> tuple[Path, ModelInfo | None]:
    if isinstance(name_or_path, str):
        known = {m.name: m for m in list_models()}
        if name_or_path in known:
            return resolve_weights(name_or_path), known[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, None
    names = ", ".join(m.name for m in list_models())
    if path.exists():
        raise ConfigError(f"{path} is not a file; pass a weights file or one of: {names}")
    raise WeightsNotFound(
        f"{name_or_path!s} is neither a registered model ({names}) nor an existing weights file"
    )


def load_clip(
    name_or_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CLIP:
    """Load CLIP from a registry name (``"ViT-B/32"``, ``"clipguard-demo"``) or a weights file
    (OpenAI TorchScript ``.pt``, a state dict, open_clip or Hugging Face safetensors).

    The model comes back on ``device`` in ``dtype``, in eval mode with gradients off. A
    registry model whose weights are not cached raises :class:`WeightsNotFound` naming the
    expected path and the ``clipguard models download`` command that fetches them.
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"dtype must be float32, float16 or bfloat16, not {dtype}")
    path, info = _locate(name_or_path)
    weights = read_weights(path)
    config = config_from_state_dict(
        weights.state_dict,
        vision_heads=weights.vision_heads,
        text_heads=weights.text_heads,
        activation=weights.activation,
    )
    model = build_model(weights.state_dict, config=config, device=device, dtype=dtype)
    if info is not None:
        model.name = info.name
        model.image_mean, model.image_std = info.mean, info.std
        if info.demo:
            _log.warning(DEMO_NOTICE)
    else:
        model.name = str(path)
    model.weights_sha256 = _sha256(path)
    _log.info(
        "loaded CLIP %s (%s, %s, input %dpx, embed %d) on %s as %s",
        model.name,
        weights.format,
        config.vision.kind,
        model.input_resolution,
        model.embed_dim,
        device,
        dtype,
    )
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def save_clip(model: CLIP, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as safetensors in OpenAI's key layout (what ``load_clip`` reads back),
    with head counts and activation in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    cfg = model.config
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    meta = {
        "format": "pt",
        "clip.vision_heads": str(cfg.vision.heads),
        "clip.text_heads": str(cfg.text.heads),
        "clip.activation": cfg.activation,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path
