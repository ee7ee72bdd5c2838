"""Recording scored frames into a store as they are judged: what ``clipguard scan --store`` and
the demo use (the stream worker publishes records to Kafka instead, for the sink).

A :class:`FrameRecorder` is told, batch by batch, which frames of a stream were scored with
which embeddings (:meth:`~FrameRecorder.add`), keeps them with their thumbnails, and writes a
stream's frames as one file when it is done (:meth:`~FrameRecorder.flush`). The file's name
comes from the stream, the model, its weights and the preprocessing (:func:`scan_file_name`),
so scanning the same input again on the same day replaces its file. The policy set's snapshot
is kept beside the frames once (:mod:`pipeline.store.policysets`)::

    recorder = FrameRecorder("store/", encoder=encoder.info(), model="clipguard-demo",
                             fit="pad", resolution=64, policies=policy_set)
    recorder.add("clip.mp4", refs, embeddings, images, source="clip.mp4")
    recorder.flush("clip.mp4")
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.errors import StoreError
from pipeline.events import EncoderInfo
from pipeline.policies.judge import FrameRef
from pipeline.policies.snapshot import PolicySet
from pipeline.store.location import StoredFile, StoreLocation
from pipeline.store.policysets import policy_versions, snapshot_bytes
from pipeline.store.schema import FrameHash, FrameInfo, frame_table, preprocess_id
from pipeline.store.thumbnails import THUMBNAIL_SIZE, thumbnails
from pipeline.store.writer import StoreWriter

__all__ = ["FrameRecorder", "scan_file_name"]


def scan_file_name(stream_id: str, *, model: str, weights_sha256: str, preprocess: str) -> str:
    """``scan-<hash>``: the file a scan of ``stream_id`` writes (the same for a rescan)."""
    blob = json.dumps([stream_id, model, weights_sha256, preprocess], separators=(",", ":"))
    return "scan-" + hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class _Pending:
    info: FrameInfo
    tables: list[pa.Table] = field(default_factory=list)


class FrameRecorder:
    """Collects the frames of streams (or scanned inputs) and writes them to a store.

    ``thumbnail_size`` 0 stores no thumbnails. ``clock`` gives ``scored_at`` (Unix seconds)."""

    def __init__(
        self,
        where: str | Path | StoreLocation | StoreWriter,
        *,
        encoder: EncoderInfo,
        model: str,
        fit: str,
        resolution: int,
        policies: PolicySet,
        thumbnail_size: int = THUMBNAIL_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer = where if isinstance(where, StoreWriter) else StoreWriter(where)
        self.encoder = encoder
        self.model = model
        self.preprocess = preprocess_id(fit, resolution)
        self.policies = policies
        self.thumbnail_size = thumbnail_size
        self.clock = clock
        self._versions = policy_versions(policies)
        self._pending: dict[str, _Pending] = {}
        self._snapshot_kept = False
        self.frames_written = 0

    def add(
        self,
        stream_id: str,
        refs: Sequence[FrameRef],
        embeddings: npt.ArrayLike,
        images: Sequence[npt.NDArray[np.uint8]] | None = None,
        *,
        source: str | None = None,
        job_id: str | None = None,
        hashes: Sequence[FrameHash] | None = None,
    ) -> None:
        """Frames ``refs`` of ``stream_id``, scored with ``embeddings`` (N, E); ``images`` are
        the pictures the model saw, for thumbnails; ``hashes`` their PDQ hashes and qualities
        (:func:`~pipeline.store.schema.frame_hashes`), where the frames were hashed."""
        if images is not None and len(images) != len(refs):
            raise StoreError(f"{len(refs)} frames with {len(images)} pictures")
        pending = self._pending.get(stream_id)
        if pending is None:
            info = FrameInfo(
                model=self.model,
                weights_sha256=self.encoder.weights_sha256,
                preprocess=self.preprocess,
                policy_set=self.policies.id,
                policy_versions=self._versions,
                stream_id=stream_id,
                scored_at=self.clock(),
                precision=self.encoder.precision,
                source=source,
                job_id=job_id,
            )
            pending = self._pending[stream_id] = _Pending(info)
        pictures = None
        if images is not None and self.thumbnail_size > 0:
            pictures = list(thumbnails(images, size=self.thumbnail_size))
        pending.tables.append(frame_table(pending.info, refs, embeddings, pictures, hashes))

    def flush(self, stream_id: str) -> list[StoredFile]:
        """Write the frames of ``stream_id`` collected so far (nothing when there are none)."""
        pending = self._pending.pop(stream_id, None)
        if pending is None or not pending.tables:
            return []
        self._keep_snapshot()
        table = pa.concat_tables(pending.tables)
        name = scan_file_name(
            stream_id,
            model=self.model,
            weights_sha256=self.encoder.weights_sha256,
            preprocess=self.preprocess,
        )
        written = self.writer.write(table, name)
        self.frames_written += table.num_rows
        return written

    def discard(self, stream_id: str) -> None:
        """Forget the frames of ``stream_id`` not yet written."""
        self._pending.pop(stream_id, None)

    def _keep_snapshot(self) -> None:
        if self._snapshot_kept:
            return
        data = snapshot_bytes(
            self.policies, model=self.model, weights_sha256=self.encoder.weights_sha256
        )
        self.writer.write_snapshot(self.policies.id, data)
        self._snapshot_kept = True
