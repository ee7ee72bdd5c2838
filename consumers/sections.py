"""The nested groups of worker settings: topic names, decoding, sampling and scan jobs.

Each is a frozen :class:`pydantic.BaseModel` that rejects unknown keys; :mod:`consumers.settings`
nests them in :class:`~consumers.settings.WorkerSettings` (``CLIPGUARD_DECODE__FIT=crop``, a
``decode:`` table in a config file). Each turns itself into the pipeline's own option type
(:meth:`DecodeSettings.limits`, :meth:`SamplingSettings.rule`, :meth:`JobsSettings.access`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.decode import Fit, InputAccess, Limits, Sampling, SamplingMode
from pipeline.decode.options import DEFAULT_HASH_SIDE
from pipeline.errors import ConfigError

__all__ = ["DecodeSettings", "JobsSettings", "SamplingSettings", "TopicNames"]

_MIB: Final = 1024 * 1024
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class _Section(BaseModel):
    """A nested group of settings: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TopicNames(_Section):
    """Kafka topic names (the topic contract in ``consumers.broker.DEFAULT_TOPICS``)."""

    segments: str = Field(
        default="clipguard.segments", description="Input topic of media segments."
    )
    scores: str = Field(default="clipguard.scores", description="Output topic of frame scores.")
    flags: str = Field(default="clipguard.flags", description="Output topic of flag events.")
    dlq: str = Field(
        default="clipguard.dlq", description="Dead-letter topic for inputs that failed."
    )
    state: str = Field(
        default="clipguard.state",
        description="Per-stream temporal state checkpoints (compacted; as many partitions as "
        "segments).",
    )
    jobs: str = Field(
        default="clipguard.jobs",
        description="Input topic of scan jobs (key = job id, value = JSON with the video's URI).",
    )
    job_status: str = Field(
        default="clipguard.job-status",
        description="Output topic of scan job status events (accepted, progress, done, failed).",
    )
    embeddings: str = Field(
        default="clipguard.embeddings",
        description="Output topic of scored frames' embeddings and thumbnails, for the frame "
        "store (when store_embeddings is on; `clipguard store sink` writes it to Parquet).",
    )

    @field_validator(
        "segments", "scores", "flags", "dlq", "state", "jobs", "job_status", "embeddings"
    )
    @classmethod
    def _valid_topic(cls, value: str) -> str:
        if not _TOPIC_NAME.fullmatch(value) or value in {".", ".."}:
            raise ValueError(f"not a valid Kafka topic name: {value!r}")
        return value


class DecodeSettings(_Section):
    """Decoding in sandboxed processes, with limits per segment."""

    processes: int = Field(default=2, gt=0, description="Decode worker processes.")
    fit: Fit = Field(
        default="pad", description="How frames are fitted to the model input: pad, crop, tiles."
    )
    max_input_bytes: int = Field(
        default=16 * _MIB,
        gt=0,
        description="Largest segment accepted, bytes (keep it within max_partition_fetch_bytes).",
    )
    timeout_s: float = Field(
        default=30.0, gt=0, allow_inf_nan=False, description="Wall-clock limit per segment, s."
    )
    max_cpu_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="CPU time per segment, every decoder thread together, s (over it the "
        "decode process is ended and the segment dead-lettered: LimitExceeded).",
    )
    max_memory_bytes: int = Field(
        default=4 * 1024 * _MIB, gt=0, description="Address-space cap of a decode process, bytes."
    )
    max_raw_streams: int = Field(
        default=64,
        gt=0,
        description="Raw H.264/HEVC streams a worker keeps decoders open for (each holds tens "
        "of MB in a decode process); a chunk of one more is dead-lettered (LimitExceeded). "
        "Idle raw streams close after stream_idle_close_s.",
    )
    hash_side: int = Field(
        default=DEFAULT_HASH_SIDE,
        ge=0,
        le=8192,
        description="Hash policies: sampled frames are divided by a whole factor to at most this "
        "many pixels on the long side before their PDQ hash (about 2 ms a frame; within a few "
        "bits of the full-size hash, see the README); 0: hash the full frame (exact, about 10 "
        "ms a 1080p frame).",
    )

    def limits(self) -> Limits:
        """These settings as decode :class:`~pipeline.decode.Limits` (other limits: defaults)."""
        return Limits(
            max_input_bytes=self.max_input_bytes,
            timeout=self.timeout_s,
            max_cpu=self.max_cpu_s,
            max_memory=self.max_memory_bytes,
        )


class SamplingSettings(_Section):
    """Which decoded frames are scored."""

    mode: SamplingMode = Field(
        default="fps", description="Frame sampling: all, fps, keyframes or scene."
    )
    fps: float = Field(
        default=2.0, gt=0, allow_inf_nan=False, description="Frames per second, for mode fps."
    )
    max_frames: int | None = Field(
        default=None, gt=0, description="At most this many frames per segment; unset: no cap."
    )

    skip_b_frames: bool = Field(
        default=False,
        description="Mode fps at a quarter of a container's frame rate or less: decode without "
        "B-frames (about 0.6x the decode time on H.264 with B-frames; a picked frame is then the "
        "next I- or P-frame, up to a few tenths of a second late).",
    )

    def rule(self) -> Sampling:
        """These settings as a :class:`~pipeline.decode.sampling.Sampling` rule."""
        return Sampling(
            mode=self.mode,
            fps=self.fps,
            max_frames=self.max_frames,
            skip_b_frames=self.skip_b_frames,
        )


class JobsSettings(_Section):
    """What scan jobs may read. A job names its input in a Kafka record, so jobs run only when
    something is allowed here: files under ``allowed_roots`` and URLs on ``allowed_url_hosts``
    (see :mod:`pipeline.decode.access`)."""

    allowed_roots: tuple[Path, ...] = Field(
        default=(),
        description="Folders whose files scan jobs may read (symlinks and .. resolved first; "
        "regular files only); none: no file.",
    )
    allowed_url_hosts: tuple[str, ...] = Field(
        default=(),
        description="Host names scan jobs may fetch http(s) URLs from ('*.example.com' for its "
        "subdomains); none: no URL.",
    )
    allowed_networks: tuple[str, ...] = Field(
        default=(),
        description="Address blocks (CIDR) job URLs may reach although not public: loopback, "
        "private, link-local and metadata addresses are refused unless listed here.",
    )
    max_redirects: int = Field(
        default=5, ge=0, le=20, description="Most HTTP redirects a job URL may take."
    )
    processes: int = Field(
        default=1,
        gt=0,
        description="Decode processes of the job runner's own (jobs never wait in, or hold, the "
        "live segments' decode processes).",
    )

    @field_validator("allowed_roots")
    @classmethod
    def _absolute_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        for root in value:
            if not root.is_absolute():
                raise ValueError(f"allowed root {str(root)!r} is not an absolute path")
        return value

    def access(self) -> InputAccess:
        """These settings as the decode stage's :class:`~pipeline.decode.InputAccess`."""
        return InputAccess(
            roots=tuple(str(r) for r in self.allowed_roots),
            url_hosts=self.allowed_url_hosts,
            networks=self.allowed_networks,
            max_redirects=self.max_redirects,
        )

    @model_validator(mode="after")
    def _valid_access(self) -> JobsSettings:
        try:
            self.access()
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self
