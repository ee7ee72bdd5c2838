"""What every image-text model offers the pipeline, whatever its family.

The encode stage, the policy compiler and the tools use a model only through this surface:
``preprocess`` (uint8 frames to the model's input on its device), ``encode_image``,
``encode_text``, ``tokenize`` (the model's own tokenizer, padded its way), the sizes
(``input_resolution``, ``embed_dim``, ``context_length``), the head (``logit_scale``,
``logit_bias`` and ``score_kind``, which says how a cosine becomes a score) and the identity
(``name``, ``fingerprint()``). :class:`ImageTextModel` is that surface as a protocol;
:class:`ImageTextModule` is the shared ``nn.Module`` base that CLIP and SigLIP build on.

Score kinds:

- ``"cosine"`` (CLIP): rules compare the cosine, or a softmax of ``logit_scale * cos`` across
  prompts.
- ``"sigmoid"`` (SigLIP): each prompt has its own probability
  ``sigmoid(logit_scale * cos + logit_bias)``, independent of the other prompts.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError, TokenizerError
from pipeline.models.configs import Family, ScoreKind
from pipeline.models.text_tokenizers import TextTokenizer

__all__ = [
    "Family",
    "ImageTextModel",
    "ImageTextModule",
    "ScoreKind",
    "preprocess_frames",
    "state_dict_sha256",
]


RGB = tuple[float, float, float]


@runtime_checkable
class ImageTextModel(Protocol):
    """The model surface the pipeline uses (CLIP and SigLIP both satisfy it)."""

    name: str  # registry name or weights path
    weights_sha256: str  # of the weights file ("" until known; see fingerprint())
    image_mean: RGB  # pixel mean the model was trained with (RGB, on [0, 1] values)
    image_std: RGB  # pixel std the model was trained with

    @property
    def family(self) -> Family: ...

    @property
    def score_kind(self) -> ScoreKind: ...

    @property
    def input_resolution(self) -> int: ...

    @property
    def embed_dim(self) -> int: ...

    @property
    def context_length(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def logit_scale(self) -> torch.Tensor: ...

    @property
    def logit_bias(self) -> torch.Tensor | None: ...

    def fingerprint(self) -> str: ...

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...

    @property
    def image_tower(self) -> nn.Module: ...

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def tokenize(self, texts: str | list[str], *, truncate: bool = False) -> torch.Tensor: ...


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's state dict (keys and raw bytes, in order)."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def preprocess_frames(
    images: torch.Tensor,
    *,
    resolution: int,
    mean: RGB,
    std: RGB,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """uint8 RGB ``[B, H, W, 3]`` (any device) -> normalised ``[B, 3, R, R]`` on ``device``.

    Frames of another size are resized on the device (bicubic, antialiased); the decode stage
    normally delivers them at the model's resolution already.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ConfigError(
            f"preprocess takes uint8 [B, H, W, 3] RGB frames, got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)  # NHWC -> NCHW
    x = x.float()
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=True)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255.0)
    return ((x - mean_t) * inv_std).to(dtype)


class ImageTextModule(nn.Module):
    """Shared base of the model families: identity, preprocessing, tokenizing.

    Subclasses define the towers and the size properties; what is here is the same for every
    family. Not weights: ``name``, ``weights_sha256``, ``image_mean``/``image_std`` and the
    tokenizer are plain attributes set by the loader.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.weights_sha256: str = ""  # of the file it was loaded from; see fingerprint()
        self.image_mean: RGB = (0.5, 0.5, 0.5)
        self.image_std: RGB = (0.5, 0.5, 0.5)
        self._text_tokenizer: TextTokenizer | None = None

    @property
    def family(self) -> Family:
        raise NotImplementedError

    @property
    def score_kind(self) -> ScoreKind:
        raise NotImplementedError

    @property
    def input_resolution(self) -> int:
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """SHA-256 identifying these weights: the weights file's, when loaded from one, else
        a hash of the state dict. Keys caches of things computed with the model."""
        if not self.weights_sha256:
            self.weights_sha256 = state_dict_sha256(self)
        return self.weights_sha256

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB ``[B, H, W, 3]`` (any device) -> normalised ``[B, 3, R, R]`` for the model.

        Frames of another size are resized on the device (bicubic, antialiased); the decode
        stage normally delivers them at the model's resolution already.
        """
        return preprocess_frames(
            images,
            resolution=self.input_resolution,
            mean=self.image_mean,
            std=self.image_std,
            device=self.device,
            dtype=self.dtype,
        )

    def _default_tokenizer(self) -> TextTokenizer | None:
        """The tokenizer to use when the loader attached none (CLIP: its BPE)."""
        return None

    @property
    def text_tokenizer(self) -> TextTokenizer:
        """This model's tokenizer; raises :class:`TokenizerError` if it has none."""
        if self._text_tokenizer is None:
            self._text_tokenizer = self._default_tokenizer()
        if self._text_tokenizer is None:
            raise TokenizerError(
                f"{self.name or type(self).__name__} has no tokenizer: load it from the folder "
                "that holds its tokenizer files (tokenizer.json or spiece.model)"
            )
        return self._text_tokenizer

    @text_tokenizer.setter
    def text_tokenizer(self, tokenizer: TextTokenizer) -> None:
        if tokenizer.context_length != self.context_length:
            raise ConfigError(
                f"tokenizer context {tokenizer.context_length} does not match the model's "
                f"text context {self.context_length}"
            )
        self._text_tokenizer = tokenizer

    def tokenize(self, texts: str | list[str], *, truncate: bool = False) -> torch.Tensor:
        """Token ids ``[len(texts), context_length]`` as this model's text tower expects them
        (on the CPU). Over-long texts raise unless ``truncate``."""
        return self.text_tokenizer(texts, truncate=truncate)
