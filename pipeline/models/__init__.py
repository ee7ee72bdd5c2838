"""Image-text models for clipguard: CLIP, SigLIP and SigLIP 2 architectures, tokenizers,
weight formats, licences and the model registry.

>>> model = load_model("clipguard-demo")
>>> tokens = model.tokenize(["a red triangle"])
>>> text = model.encode_text(tokens)
>>> encoder = load_encoder("clipguard-demo")   # the image tower, fastest guarded precision
>>> embeddings = encoder.encode(frames)        # uint8 [B, R, R, 3] -> float32 [B, E]
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel, ScoreKind
    from pipeline.models.converted import ConvertedModel, converted_dir, list_converted
    from pipeline.models.encoders import ImageEncoder, Precision, load_encoder
    from pipeline.models.guard import GuardReport, GuardSettings, RegressionSet
    from pipeline.models.licenses import LICENSE_ENV, check_license
    from pipeline.models.loading import load_clip, load_model, save_clip
    from pipeline.models.model import CLIP, CLIPConfig, TextConfig, VisionConfig, build_model
    from pipeline.models.registry import (
        DEMO_MODEL,
        DEMO_NOTICE,
        ModelInfo,
        cache_dir,
        get_model_info,
        list_models,
        resolve_weights,
    )
    from pipeline.models.siglip import SigLIP, SiglipConfig
    from pipeline.models.text_tokenizers import TextTokenizer, TextTooLong, check_text_length
    from pipeline.models.tokenizer import tokenize

__all__ = [
    "CLIP",
    "DEMO_MODEL",
    "DEMO_NOTICE",
    "LICENSE_ENV",
    "CLIPConfig",
    "ConvertedModel",
    "GuardReport",
    "GuardSettings",
    "ImageEncoder",
    "ImageTextModel",
    "ModelInfo",
    "Precision",
    "RegressionSet",
    "ScoreKind",
    "SigLIP",
    "SiglipConfig",
    "TextConfig",
    "TextTokenizer",
    "TextTooLong",
    "VisionConfig",
    "build_model",
    "cache_dir",
    "check_license",
    "check_text_length",
    "converted_dir",
    "get_model_info",
    "list_converted",
    "list_models",
    "load_clip",
    "load_encoder",
    "load_model",
    "resolve_weights",
    "save_clip",
    "tokenize",
]

# Names load their module on first use: the registry and configurations import no torch, so
# `clipguard models list` and `policy lint` stay fast.
_WHERE = {
    "ConvertedModel": "converted",
    "converted_dir": "converted",
    "list_converted": "converted",
    "ImageEncoder": "encoders",
    "Precision": "encoders",
    "load_encoder": "encoders",
    "GuardReport": "guard",
    "GuardSettings": "guard",
    "RegressionSet": "guard",
    "ImageTextModel": "base",
    "ScoreKind": "configs",
    "LICENSE_ENV": "licenses",
    "check_license": "licenses",
    "load_clip": "loading",
    "load_model": "loading",
    "save_clip": "loading",
    "CLIP": "model",
    "CLIPConfig": "configs",
    "TextConfig": "configs",
    "VisionConfig": "configs",
    "build_model": "model",
    "DEMO_MODEL": "registry",
    "DEMO_NOTICE": "registry",
    "ModelInfo": "registry",
    "cache_dir": "registry",
    "get_model_info": "registry",
    "list_models": "registry",
    "resolve_weights": "registry",
    "SigLIP": "siglip",
    "SiglipConfig": "configs",
    "TextTokenizer": "text_tokenizers",
    "TextTooLong": "text_tokenizers",
    "check_text_length": "text_tokenizers",
    "tokenize": "tokenizer",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"pipeline.models.{module}"), name)
