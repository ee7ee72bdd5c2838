"""Named model releases: where their weights come from, what they are, where they are cached.

Every OpenAI release is listed with its architecture, embedding size, input resolution,
download URL and SHA-256 (OpenAI's URLs carry the file's SHA-256 as a path segment), plus
``clipguard-demo``, the tiny model trained in this repository on synthetic scenes and shipped
inside the package. SigLIP, SigLIP 2 and open_clip checkpoints hosted on Hugging Face are
listed in :mod:`pipeline.models.zoo` (repository, revision and files). Each entry names its
family and licence. Weights are cached under ``$CLIPGUARD_CACHE_DIR`` if set, else
``$XDG_CACHE_HOME/clipguard/models``, else ``~/.cache/clipguard/models``.

OpenAI publishes TorchScript archives (``ViT-B-32.pt``), which only code can read. They are
converted to safetensors when downloaded (:mod:`pipeline.models.to_safetensors`): an OpenAI
entry's :meth:`ModelInfo.path` is the converted file (``ViT-B-32.safetensors``), what workers
load; :meth:`ModelInfo.archive_path` is where the archive is downloaded to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.errors import ConfigError, WeightsNotFound
from pipeline.models.configs import (
    OPENAI_MEAN,
    OPENAI_STD,
    CLIPConfig,
    Family,
    SiglipConfig,
    TextConfig,
    VisionConfig,
)

__all__ = [
    "DEMO_MODEL",
    "DEMO_NOTICE",
    "HFFile",
    "HFSource",
    "ModelInfo",
    "cache_dir",
    "get_model_info",
    "list_models",
    "registry_archive_digests",
    "resolve_weights",
]

DEMO_MODEL = "clipguard-demo"
DEMO_NOTICE = (
    "clipguard-demo is a tiny demo model: it only knows synthetic shapes, colours and a few "
    "printed words. For real moderation use a real CLIP: `clipguard models download ViT-B/32`, "
    'then pass `--model ViT-B/32` (or load_clip("ViT-B/32") in Python).'
)

_OPENAI_BASE = "https://openaipublic.azureedge.net/clip/models"


@dataclass(frozen=True)
class HFFile:
    name: str  # file name in the repository
    sha256: str = ""  # published SHA-256; "" when none is known (the download is then unverified)


@dataclass(frozen=True)
class HFSource:
    repo: str  # Hugging Face repository, "owner/name"
    files: tuple[HFFile, ...]  # the weights file first, then config and tokenizer files
    revision: str = "main"  # branch, tag or commit the files are fetched from

    def url(self, base: str, file: str) -> str:
        """``{base}/{repo}/resolve/{revision}/{file}``: the Hugging Face download layout."""
        return f"{base.rstrip('/')}/{self.repo}/resolve/{self.revision}/{file}"


@dataclass(frozen=True)
class ModelInfo:
    name: str  # registry name, as used on the command line
    config: CLIPConfig | SiglipConfig  # architecture (what the weights' shapes say)
    url: str  # where the weights download from ("" for bundled models)
    sha256: str  # SHA-256 of the weights file
    filename: str  # file name in the cache (or in the package, for bundled models)
    mean: tuple[float, float, float] = OPENAI_MEAN  # pixel mean the model was trained with
    std: tuple[float, float, float] = OPENAI_STD  # pixel std the model was trained with
    bundled: bool = False  # shipped inside the package: never downloaded
    demo: bool = False  # a demo model: say so wherever it shows
    family: Family = "clip"  # "clip", "siglip" or "siglip2"
    license: str = "mit"  # licence id of the weights (pipeline.models.licenses)
    hf: HFSource | None = None  # Hugging Face repository and files, when hosted there

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def image_resolution(self) -> int:
        if isinstance(self.config, SiglipConfig):
            return self.config.vision.image_size
        return self.config.vision.image_resolution

    @property
    def text_context(self) -> int:
        return self.config.text.context_length

    @property
    def source(self) -> str:
        """Where the weights come from: ``hf:owner/name@revision``, a URL, or "bundled"."""
        if self.hf is not None:
            return f"hf:{self.hf.repo}@{self.hf.revision}"
        return self.url or "bundled"

    @property
    def architecture(self) -> str:
        if isinstance(self.config, SiglipConfig):
            v = self.config.vision
            return f"ViT {v.layers}x{v.width} /{v.patch_size} MAP"
        vis = self.config.vision
        if vis.kind == "vit":
            return f"ViT {vis.layers}x{vis.width} /{vis.patch_size}"
        depths = vis.layers if isinstance(vis.layers, tuple) else (vis.layers,)
        return f"ResNet {'-'.join(str(n) for n in depths)} w{vis.width}"

    @property
    def is_archive(self) -> bool:
        """Downloaded as an OpenAI TorchScript archive and converted to safetensors."""
        return not self.bundled and self.hf is None and self.filename.endswith(".pt")

    def path(self) -> Path:
        """Where this model's weights are expected on disk (they may not be there): for an
        OpenAI archive, the safetensors file it is converted to."""
        if self.bundled:
            return Path(str(resources.files("pipeline.models") / "data" / self.filename))
        if self.is_archive:
            return cache_dir() / f"{self.filename.removesuffix('.pt')}.safetensors"
        return cache_dir() / self.filename

    def archive_path(self) -> Path | None:
        """Where an OpenAI archive is downloaded to (None for other entries)."""
        return cache_dir() / self.filename if self.is_archive else None

    def is_available(self) -> bool:
        return self.path().is_file()


def _openai(
    name: str,
    sha256: str,
    filename: str,
    embed_dim: int,
    vision: VisionConfig,
    text_width: int,
) -> ModelInfo:
    text = TextConfig(width=text_width, heads=text_width // 64, layers=12)
    return ModelInfo(
        name=name,
        config=CLIPConfig(embed_dim=embed_dim, vision=vision, text=text),
        url=f"{_OPENAI_BASE}/{sha256}/{filename}",
        sha256=sha256,
        filename=filename,
    )


def _resnet(res: int, width: int, layers: tuple[int, int, int, int]) -> VisionConfig:
    return VisionConfig(
        kind="resnet", image_resolution=res, width=width, layers=layers, heads=width * 32 // 64
    )


def _vit(res: int, width: int, layers: int, patch: int) -> VisionConfig:
    return VisionConfig(
        kind="vit",
        image_resolution=res,
        width=width,
        layers=layers,
        heads=width // 64,
        patch_size=patch,
    )


# The demo model's architecture; scripts/train_demo_model.py trains exactly this.
_DEMO_CONFIG = CLIPConfig(
    embed_dim=96,
    vision=VisionConfig(kind="resnet", image_resolution=64, width=16, layers=(1, 2, 2, 1), heads=4),
    text=TextConfig(context_length=24, vocab_size=49408, width=64, heads=2, layers=3),
)

_MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        ModelInfo(
            name=DEMO_MODEL,
            config=_DEMO_CONFIG,
            url="",
            sha256="",  # bundled: never downloaded, nothing to verify against
            filename="clipguard-demo.safetensors",
            bundled=True,
            demo=True,
        ),
        _openai(
            "RN50",
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
            "RN50.pt",
            1024,
            _resnet(224, 64, (3, 4, 6, 3)),
            512,
        ),
        _openai(
            "RN101",
            "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599",
            "RN101.pt",
            512,
            _resnet(224, 64, (3, 4, 23, 3)),
            512,
        ),
        _openai(
            "RN50x4",
            "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd",
            "RN50x4.pt",
            640,
            _resnet(288, 80, (4, 6, 10, 6)),
            640,
        ),
        _openai(
            "RN50x16",
            "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa",
            "RN50x16.pt",
            768,
            _resnet(384, 96, (6, 8, 18, 8)),
            768,
        ),
        _openai(
            "RN50x64",
            "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c",
            "RN50x64.pt",
            1024,
            _resnet(448, 128, (3, 15, 36, 10)),
            1024,
        ),
        _openai(
            "ViT-B/32",
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
            "ViT-B-32.pt",
            512,
            _vit(224, 768, 12, 32),
            512,
        ),
        _openai(
            "ViT-B/16",
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
            "ViT-B-16.pt",
            512,
            _vit(224, 768, 12, 16),
            512,
        ),
        _openai(
            "ViT-L/14",
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
            "ViT-L-14.pt",
            768,
            _vit(224, 1024, 24, 14),
            768,
        ),
        _openai(
            "ViT-L/14@336px",
            "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
            "ViT-L-14-336px.pt",
            768,
            _vit(336, 1024, 24, 14),
            768,
        ),
    ]
}


def cache_dir() -> Path:
    """The weights cache: ``$CLIPGUARD_CACHE_DIR``, else the XDG cache dir."""
    override = os.environ.get("CLIPGUARD_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "clipguard" / "models"


def _all_models() -> dict[str, ModelInfo]:
    # the zoo imports ModelInfo from here, so it is merged in on first use
    from pipeline.models.zoo import ZOO_MODELS

    return {**_MODELS, **{m.name: m for m in ZOO_MODELS}}


def list_models() -> list[ModelInfo]:
    """Every registered model, the bundled demo model first."""
    return list(_all_models().values())


def get_model_info(name: str) -> ModelInfo:
    models = _all_models()
    try:
        return models[name]
    except KeyError:
        known = ", ".join(models)
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None


def registry_archive_digests() -> frozenset[str]:
    """The SHA-256 of every TorchScript archive the registry lists: the only archives clipguard
    ever lets TorchScript read (an archive runs the code it carries)."""
    return frozenset(m.sha256.lower() for m in _all_models().values() if m.is_archive and m.sha256)


def resolve_weights(name: str) -> Path:
    """The local weights file of registry model ``name``, or a WeightsNotFound that says where
    they were expected and which command fetches them."""
    info = get_model_info(name)
    path = info.path()
    if path.is_file():
        return path
    archive = info.archive_path()
    if archive is not None and archive.is_file():
        raise WeightsNotFound(
            f"{name} is cached only as the TorchScript archive {archive}, which workers do not "
            f"load; convert it to {path} with `clipguard models download {name}` (nothing is "
            "downloaded when the archive verifies)"
        )
    if info.bundled:
        raise WeightsNotFound(
            f"the bundled weights of {name} are missing from the installed package "
            f"(expected at {path}); reinstall clipguard, or train a model with "
            f"`python scripts/train_demo_model.py --out {path}` (its card: {name}.md)"
        )
    raise WeightsNotFound(
        f"weights for {name} are not in the cache (expected at {path}); fetch them with "
        f"`clipguard models download {name}` (set CLIPGUARD_CACHE_DIR to use another cache)"
    )
