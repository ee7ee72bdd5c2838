"""``load_model``: a registry name or a weights file in, a ready image-text model out.

The family is told by the file's keys, never by its name: a SigLIP or SigLIP 2 checkpoint
(any layout :mod:`pipeline.models.siglip_formats` reads) becomes a
:class:`~pipeline.models.siglip.SigLIP` with the tokenizer found beside it, anything else a
:class:`~pipeline.models.model.CLIP`. ``load_clip`` is the CLIP-only form the pipeline has
always called.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch

from pipeline.errors import ChecksumMismatch, ConfigError, WeightsFormatError, WeightsNotFound
from pipeline.models.formats import RawWeights, read_state_dict, weights_from_raw
from pipeline.models.integrity import verified_sha256
from pipeline.models.licenses import check_license
from pipeline.models.model import CLIP, CLIPConfig, build_model, config_from_state_dict
from pipeline.models.registry import (
    DEMO_NOTICE,
    ModelInfo,
    list_models,
    resolve_weights,
)
from pipeline.models.siglip import SigLIP
from pipeline.models.siglip_formats import build_siglip, is_siglip_state_dict, siglip_weights
from pipeline.models.to_safetensors import SOURCE_KEY, converted_sha256

__all__ = ["WEIGHTS_FILE_NAMES", "load_clip", "load_model", "model_identity", "save_clip"]

_log = logging.getLogger(__name__)

#: What a model folder's weights file is called, in the order looked for.
WEIGHTS_FILE_NAMES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)


def _locate(name_or_path: str | Path) -> tuple[Path, ModelInfo | None]:
    if isinstance(name_or_path, str):
        known = {m.name: m for m in list_models()}
        if name_or_path in known:
            return resolve_weights(name_or_path), known[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path, None
    names = ", ".join(m.name for m in list_models())
    if path.is_dir():
        for candidate in WEIGHTS_FILE_NAMES:
            if (path / candidate).is_file():
                return path / candidate, None
        raise WeightsNotFound(
            f"{path} is a folder without a weights file ({', '.join(WEIGHTS_FILE_NAMES)}); "
            f"pass a weights file, a model folder or one of: {names}"
        )
    if path.exists():
        raise ConfigError(f"{path} is not a file; pass a weights file or one of: {names}")
    raise WeightsNotFound(
        f"{name_or_path!s} is neither a registered model ({names}) nor an existing weights file"
    )


def model_identity(name_or_path: str | Path) -> str:
    """The name :func:`load_model` gives the model ``name_or_path`` names (its registry name, or
    the path of its weights file when given a file or a model folder), without loading it; the
    text itself when it names nothing here. Score records and stored frames carry this name."""
    if isinstance(name_or_path, str) and name_or_path in {m.name for m in list_models()}:
        return name_or_path
    try:
        path, info = _locate(name_or_path)
    except (WeightsNotFound, ConfigError):
        return str(name_or_path)
    return info.name if info is not None else str(path)


def load_model(
    name_or_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    image_size: int | None = None,
    accept_licenses: Iterable[str] | None = None,
) -> CLIP | SigLIP:
    """Load a CLIP, SigLIP or SigLIP 2 model from a registry name, a weights file or a model
    folder (Hugging Face or open_clip layout).

    The model comes back on ``device`` in ``dtype``, in eval mode with gradients off, with its
    tokenizer (``model.tokenize``). ``image_size`` picks the resolution of a SigLIP 2 NaFlex
    checkpoint (fixed-resolution checkpoints only run at their own). A registry model under a
    restricted licence raises :class:`~pipeline.errors.LicenseNotAccepted` unless the licence
    is in ``accept_licenses`` or ``$CLIPGUARD_ACCEPT_LICENSES``.
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"dtype must be float32, float16 or bfloat16, not {dtype}")
    if isinstance(name_or_path, str):
        known = {m.name: m for m in list_models()}
        if name_or_path in known:  # refuse before looking for (or at) the weights
            check_license(name_or_path, known[name_or_path].license, accept=accept_licenses)
    path, info = _locate(name_or_path)
    weights_sha256 = _verify(path, info)
    raw = read_state_dict(path)
    if info is not None and info.is_archive and raw.metadata.get(SOURCE_KEY) != info.sha256:
        raise ChecksumMismatch(
            f"{path}: its metadata names source SHA-256 {raw.metadata.get(SOURCE_KEY)!r}, not "
            f"the registry's {info.sha256} for {info.name}; convert it again with `clipguard "
            f"models download {info.name} --force`"
        )
    model: CLIP | SigLIP
    if is_siglip_state_dict(raw.state_dict):
        weights = siglip_weights(raw.state_dict, path, image_size=image_size)
        model = build_siglip(
            weights, device=device, dtype=dtype, tokenizer_dir=path.parent, source=str(path)
        )
        fmt = weights.format
    else:
        if image_size is not None:
            raise ConfigError("image_size applies to SigLIP 2 NaFlex checkpoints only")
        model, fmt = _build_clip(raw, path, info, device=device, dtype=dtype)
    if info is not None and not info.bundled:
        got = (model.family, model.embed_dim, model.input_resolution, model.context_length)
        want = (info.family, info.embed_dim, info.image_resolution, info.text_context)
        if got != want:
            raise WeightsFormatError(
                f"{path} does not hold {info.name}: (family, embedding, resolution, text "
                f"context) is {got}, the registry entry says {want}; remove the file and "
                f"download it again with `clipguard models download {info.name}`"
            )
    model.name = info.name if info is not None else str(path)
    if info is not None and info.demo:
        _log.warning(DEMO_NOTICE)
    model.weights_sha256 = weights_sha256
    _log.info(
        "loaded %s %s (%s, input %dpx, embed %d, text context %d) on %s as %s",
        model.family,
        model.name,
        fmt,
        model.input_resolution,
        model.embed_dim,
        model.context_length,
        device,
        dtype,
    )
    return model


def _verify(path: Path, info: ModelInfo | None) -> str:
    """Check a registry file before anything parses it; the SHA-256 that names its weights.

    An OpenAI entry is its converted safetensors file, which must be the one its conversion
    record names (and is named by the archive's registry digest, as before conversion); other
    cached entries are compared with their registry digest; anything else is only hashed."""
    if info is not None and info.is_archive:
        verified_sha256(path, converted_sha256(info))
        return info.sha256.lower()
    cached = info is not None and not info.bundled and info.hf is None and bool(info.sha256)
    expected = info.sha256 if cached and info is not None else None
    return verified_sha256(path, expected, remember=cached)


def _build_clip(
    raw: RawWeights,
    path: Path,
    info: ModelInfo | None,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
) -> tuple[CLIP, str]:
    weights = weights_from_raw(raw, path)
    vision_heads, text_heads, activation = (
        weights.vision_heads,
        weights.text_heads,
        weights.activation,
    )
    if info is not None and isinstance(info.config, CLIPConfig) and not info.bundled:
        # the registry knows what the weights do not say (heads, activation)
        vision_heads = info.config.vision.heads
        text_heads = info.config.text.heads
        activation = info.config.activation
    config = config_from_state_dict(
        weights.state_dict,
        vision_heads=vision_heads,
        text_heads=text_heads,
        activation=activation,
    )
    model = build_model(weights.state_dict, config=config, device=device, dtype=dtype)
    if info is not None:
        model.image_mean, model.image_std = info.mean, info.std
    elif weights.image_mean is not None and weights.image_std is not None:
        model.image_mean, model.image_std = weights.image_mean, weights.image_std
    return model, f"{weights.format}, {config.vision.kind}"


def load_clip(
    name_or_path: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> CLIP:
    """Load CLIP from a registry name (``"ViT-B/32"``, ``"clipguard-demo"``) or a weights file
    (a state dict, open_clip or Hugging Face safetensors, or an OpenAI TorchScript ``.pt``
    whose SHA-256 is a registry release; any other archive is refused).

    The model comes back on ``device`` in ``dtype``, in eval mode with gradients off. A
    registry model whose weights are not cached raises :class:`WeightsNotFound` naming the
    expected path and the ``clipguard models download`` command that fetches them. A SigLIP
    checkpoint raises :class:`ConfigError`: load it with :func:`load_model`.
    """
    model = load_model(name_or_path, device=device, dtype=dtype)
    if not isinstance(model, CLIP):
        raise ConfigError(
            f"{name_or_path!s} is a {model.family} model, not CLIP; load it with load_model()"
        )
    return model


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
