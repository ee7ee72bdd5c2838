"""CLIP for clipguard: architecture, BPE tokenizer, weight formats and the model registry.

>>> model = load_clip("clipguard-demo")
>>> tokens = tokenize(["a red triangle"], context_length=model.context_length)
>>> text = model.encode_text(tokens)
"""

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
    "ModelInfo",
    "TextConfig",
    "VisionConfig",
    "build_model",
    "cache_dir",
    "get_model_info",
    "list_models",
    "load_clip",
    "resolve_weights",
    "save_clip",
    "tokenize",
]
