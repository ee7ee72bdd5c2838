"""The encode stage: batches of uint8 RGB frames to L2-normalised image embeddings.

Frames travel as bytes (uint8) to the model's device; normalisation happens there
(:meth:`pipeline.models.model.CLIP.preprocess`). Inference runs in ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from pipeline.models.base import ImageTextModel

__all__ = ["Encoder"]


class Encoder:
    """Encodes frames with ``model`` in batches of at most ``batch_size``."""

    def __init__(self, model: ImageTextModel, *, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, not {batch_size}")
        self.model = model
        self.batch_size = batch_size

    @classmethod
    def for_model(cls, model: ImageTextModel, batch_size: int) -> Encoder:
        """``Encoder(model, batch_size=batch_size)``: the stream worker's default factory."""
        return cls(model, batch_size=batch_size)

    @property
    def resolution(self) -> int:
        return self.model.input_resolution

    def encode(
        self, frames: npt.NDArray[np.uint8] | Sequence[npt.NDArray[np.uint8]]
    ) -> torch.Tensor:
        """(N, R, R, 3) uint8 RGB -> (N, E) float32 unit embeddings on the CPU."""
        if isinstance(frames, np.ndarray):
            batch = frames
        elif len(frames) == 0:
            return torch.zeros(0, self.model.embed_dim)
        else:
            batch = np.stack(frames)
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise ConfigError(
                f"frames must be uint8 (N, H, W, 3) RGB, got {batch.dtype} {batch.shape}"
            )
        out = []
        with torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(batch[i : i + self.batch_size]))
                emb = self.model.encode_image(self.model.preprocess(chunk))
                out.append(F.normalize(emb.float(), dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.model.embed_dim)
        return torch.cat(out)
