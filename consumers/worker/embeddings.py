"""The worker's frame store records: each judged segment's frames to the embeddings topic.

When ``store_embeddings`` is on, :class:`EmbeddingsOut` turns a segment that was just judged
into one ``frames`` record (:mod:`pipeline.store.records`: Arrow, float16 embeddings, JPEG
thumbnails, each frame's PDQ hash: the worker hashes every sampled frame while it stores)
published with the segment's other outputs, so the segment's offset is committed only once
the record is acknowledged. The first time a policy set is used it also publishes the set's
snapshot to every partition of the topic, so every sink keeps it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from consumers.worker.outbox import Output
from consumers.worker.segments import Segment
from pipeline.events import EncoderInfo
from pipeline.policies.snapshot import PolicySet
from pipeline.store.policysets import policy_versions, snapshot_bytes
from pipeline.store.records import KIND_FRAMES, KIND_HEADER, KIND_POLICY_SET, frames_value
from pipeline.store.schema import FrameInfo, frame_hashes, frame_table, preprocess_id
from pipeline.store.thumbnails import thumbnails

__all__ = ["EmbeddingsOut"]


class EmbeddingsOut:
    """Builds the embeddings topic's records of judged segments (see the module docstring).

    ``partitions()`` gives the topic's partition count (asked once per new policy set)."""

    def __init__(
        self,
        topic: str,
        *,
        model: str,
        encoder: EncoderInfo,
        fit: str,
        resolution: int,
        thumbnails: bool,
        partitions: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.topic = topic
        self.model = model
        self.encoder = encoder
        self.preprocess = preprocess_id(fit, resolution)
        self.thumbnails = thumbnails
        self.partitions = partitions
        self.clock = clock
        self._announced: set[str] = set()

    def outputs(self, seg: Segment, stream_id: str, policies: PolicySet) -> list[Output]:
        """The records of ``seg`` (before its frames are released): the snapshot of a set
        not yet announced, then its frames (none when it scored no frame)."""
        if not seg.refs or seg.embeddings is None:
            return []
        out = self._announce(policies)
        info = FrameInfo(
            model=self.model,
            weights_sha256=self.encoder.weights_sha256,
            preprocess=self.preprocess,
            policy_set=policies.id,
            policy_versions=policy_versions(policies),
            stream_id=stream_id,
            scored_at=self.clock(),
            precision=self.encoder.precision,
            segment_partition=seg.tp.partition,
            segment_offset=seg.offset,
        )
        pictures = hashes = None
        if len(seg.frames) == len(seg.refs):
            hashes = frame_hashes(seg.frames)
            if self.thumbnails:
                pictures = list(thumbnails([f.image for f in seg.frames]))
        table = frame_table(info, seg.refs, seg.embeddings, pictures, hashes)
        out.append(
            Output(
                self.topic,
                stream_id.encode(),
                frames_value(table),
                [(KIND_HEADER, KIND_FRAMES)],
            )
        )
        return out

    def _announce(self, policies: PolicySet) -> list[Output]:
        if policies.id in self._announced:
            return []
        self._announced.add(policies.id)
        data = snapshot_bytes(
            policies, model=self.model, weights_sha256=self.encoder.weights_sha256
        )
        key = policies.id.encode()
        header = [(KIND_HEADER, KIND_POLICY_SET)]
        return [
            Output(self.topic, key, data, list(header), partition=p)
            for p in range(max(1, self.partitions()))
        ]
