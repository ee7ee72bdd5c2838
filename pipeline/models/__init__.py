"""Image-text models for clipguard: CLIP, SigLIP and SigLIP 2 architectures, tokenizers,
weight formats, licences and the model registry.

>>> model = load_model("clipguard-demo")
>>> tokens = model.tokenize(["a red triangle"])
>>> text = model.encode_text(tokens)
"""

from pipeline.models.base import ImageTextModel, ScoreKind
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
    "ImageTextModel",
    "ModelInfo",
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
    "get_model_info",
    "list_models",
    "load_clip",
    "load_model",
    "resolve_weights",
    "save_clip",
    "tokenize",
]
