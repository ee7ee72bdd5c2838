"""Registry entries beyond OpenAI's releases: SigLIP, SigLIP 2 and open_clip checkpoints.

All of these are hosted on Hugging Face and fetched file by file from
``https://huggingface.co/{repo}/resolve/{revision}/{file}`` (or the same layout under
``CLIPGUARD_MODEL_MIRROR``) into ``{cache}/{name}/``. Each entry lists the files a model needs
(weights, then the config and tokenizer files that sit beside them), its architecture (the
shapes the weights must have), its family and the licence of its weights.

No SHA-256 is filled in: Hugging Face publishes the SHA-256 of each large file on its page,
which could not be read where this table was written. A file without one downloads unverified
(with a warning); put the published value in ``HFFile.sha256`` and the download is checked
like OpenAI's. Pin ``revision`` to a commit to make the unverified files immutable as well.

Sources for the architectures: the checkpoints' ``config.json`` (``transformers``' SigLIP
conversion uses B 768/12 heads, L 1024/16, So400m 1152/16 with MLP 4304) and open_clip's
``model_configs/*.json`` (ViT-H/14 head width 80, ViT-bigG/14 head width 104 and MLP ratio
4.9231); licences from the model cards.
"""

from __future__ import annotations

from pipeline.models.configs import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    Activation,
    CLIPConfig,
    SiglipConfig,
    SiglipFamily,
    SiglipTextConfig,
    SiglipVisionConfig,
    TextConfig,
    VisionConfig,
)
from pipeline.models.registry import HFFile, HFSource, ModelInfo

__all__ = ["ZOO_MODELS"]

# (width, layers, heads, mlp width) of SigLIP's towers; the text tower has the same size.
_SIGLIP_SIZES = {
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "So400m": (1152, 27, 16, 4304),
}
_SIGLIP_FILES = ("model.safetensors", "config.json", "spiece.model", "tokenizer_config.json")
_SIGLIP2_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_config.json")


def _files(names: tuple[str, ...]) -> tuple[HFFile, ...]:
    return tuple(HFFile(n) for n in names)


def _siglip(name: str, family: SiglipFamily, size: str, patch: int, res: int) -> ModelInfo:
    width, layers, heads, mlp = _SIGLIP_SIZES[size]
    files = _SIGLIP2_FILES if family == "siglip2" else _SIGLIP_FILES
    config = SiglipConfig(
        vision=SiglipVisionConfig(
            image_size=res, patch_size=patch, width=width, layers=layers, heads=heads, mlp_width=mlp
        ),
        text=SiglipTextConfig(
            vocab_size=256_000 if family == "siglip2" else 32_000,
            width=width,
            layers=layers,
            heads=heads,
            mlp_width=mlp,
            embed_dim=width,
        ),
        family=family,
    )
    return ModelInfo(
        name=name,
        config=config,
        url="",
        sha256="",
        filename=f"{name}/{files[0]}",
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        family=family,
        license="apache-2.0",
        hf=HFSource(repo=f"google/{name}", files=_files(files)),
    )


# (vision width, layers, heads, mlp width, patch), (text width, heads, layers), embed dim
_CLIP_SIZES = {
    "B-32": ((768, 12, 12, 0, 32), (512, 8, 12), 512),
    "B-16": ((768, 12, 12, 0, 16), (512, 8, 12), 512),
    "L-14": ((1024, 24, 16, 0, 14), (768, 12, 12), 768),
    "H-14": ((1280, 32, 16, 0, 14), (1024, 16, 24), 1024),
    "bigG-14": ((1664, 48, 16, 8192, 14), (1280, 20, 32), 1280),
}


def _open_clip(
    name: str, size: str, repo: str, *, activation: Activation, license: str
) -> ModelInfo:
    (width, layers, heads, mlp, patch), (t_width, t_heads, t_layers), embed = _CLIP_SIZES[size]
    config = CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(
            kind="vit",
            image_resolution=224,
            width=width,
            layers=layers,
            heads=heads,
            patch_size=patch,
            mlp_width=mlp,
        ),
        text=TextConfig(width=t_width, heads=t_heads, layers=t_layers),
        activation=activation,
    )
    return ModelInfo(
        name=name,
        config=config,
        url="",
        sha256="",
        filename=f"{name}/{_OPEN_CLIP_FILES[0]}",
        license=license,
        hf=HFSource(repo=repo, files=_files(_OPEN_CLIP_FILES)),
    )


ZOO_MODELS: tuple[ModelInfo, ...] = (
    _siglip("siglip2-base-patch16-224", "siglip2", "B", 16, 224),
    _siglip("siglip2-base-patch16-256", "siglip2", "B", 16, 256),
    _siglip("siglip2-base-patch16-384", "siglip2", "B", 16, 384),
    _siglip("siglip2-base-patch32-256", "siglip2", "B", 32, 256),
    _siglip("siglip2-large-patch16-256", "siglip2", "L", 16, 256),
    _siglip("siglip2-so400m-patch14-384", "siglip2", "So400m", 14, 384),
    _siglip("siglip-base-patch16-224", "siglip", "B", 16, 224),
    _siglip("siglip-base-patch16-256", "siglip", "B", 16, 256),
    _siglip("siglip-base-patch16-384", "siglip", "B", 16, 384),
    _siglip("siglip-large-patch16-256", "siglip", "L", 16, 256),
    _siglip("siglip-so400m-patch14-384", "siglip", "So400m", 14, 384),
    _open_clip(
        "ViT-B-32-laion2b",
        "B-32",
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        activation="gelu",
        license="mit",
    ),
    _open_clip(
        "ViT-B-16-datacomp",
        "B-16",
        "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K",
        activation="gelu",
        license="mit",
    ),
    _open_clip(
        "ViT-L-14-datacomp",
        "L-14",
        "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
        activation="gelu",
        license="mit",
    ),
    _open_clip(
        "ViT-H-14-laion2b",
        "H-14",
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        activation="gelu",
        license="mit",
    ),
    _open_clip(
        "ViT-bigG-14-laion2b",
        "bigG-14",
        "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
        activation="gelu",
        license="mit",
    ),
    _open_clip(
        "ViT-B-16-dfn2b",
        "B-16",
        "apple/DFN2B-CLIP-ViT-B-16",
        activation="quick_gelu",
        license="apple-sample-code",
    ),
    _open_clip(
        "ViT-H-14-dfn5b",
        "H-14",
        "apple/DFN5B-CLIP-ViT-H-14",
        activation="quick_gelu",
        license="apple-sample-code",
    ),
    _open_clip(
        "ViT-B-16-metaclip-400m",
        "B-16",
        "timm/vit_base_patch16_clip_224.metaclip_400m",
        activation="quick_gelu",
        license="cc-by-nc-4.0",
    ),
)
