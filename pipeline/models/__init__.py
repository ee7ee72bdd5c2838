"""CLIP for clipguard: architecture, BPE tokenizer, weight formats and the model registry.

>>> model = load_clip("clipguard-demo")
>>> tokens = tokenize(["a red triangle"], context_length=model.context_length)
>>> text = model.encode_text(tokens)
>>> encoder = load_encoder("clipguard-demo")   # the image tower, fastest guarded precision
>>> embeddings = encoder.encode(frames)        # uint8 [B, R, R, 3] -> float32 [B, E]
"""

from pipeline.models.converted import ConvertedModel, converted_dir, list_converted
from pipeline.models.encoders import ImageEncoder, Precision, load_encoder
from pipeline.models.guard import GuardReport, GuardSettings, RegressionSet
from pipeline.models.loading import load_clip, save_clip
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
from pipeline.models.tokenizer import tokenize

__all__ = [
    "CLIP",
    "DEMO_MODEL",
    "DEMO_NOTICE",
    "CLIPConfig",
    "ConvertedModel",
    "GuardReport",
    "GuardSettings",
    "ImageEncoder",
    "ModelInfo",
    "Precision",
    "RegressionSet",
    "TextConfig",
    "VisionConfig",
    "build_model",
    "cache_dir",
    "converted_dir",
    "get_model_info",
    "list_converted",
    "list_models",
    "load_clip",
    "load_encoder",
    "resolve_weights",
    "save_clip",
    "tokenize",
]
