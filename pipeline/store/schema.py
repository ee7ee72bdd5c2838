"""The frame store's record: one scored frame (or tile) as a row of Arrow columns.

Every writer (the Kafka sink, ``clipguard scan --store``, the demo) builds rows with
:func:`frame_table` and every reader gets them back as these columns. In a Parquet file the
model and the date are not columns: they are the Hive partition folders the file sits in
(``model=<name>/date=YYYY-MM-DD/``), so DuckDB, Spark, Trino and Athena read them as
columns of the same names.

==================  ==========================  =================================================
column              type                        meaning
==================  ==========================  =================================================
frame_id            string                      deterministic id of the frame (:func:`frame_id`)
stream_id           string                      the stream, or the file or URL of a scan
source              string, nullable            the file or URL of a scan
job_id              string, nullable            the scan job, for scans run as Kafka jobs
scored_at           timestamp[ms, UTC]          when it was scored (the date partition's day)
ts                  float64                     stream-timeline seconds of the frame
seq                 int64                       the stream's segment number (0 for a file)
frame_index         int64                       presentation index within the segment or file
tile                int16                       tile number (fit ``tiles``), else 0
segment_partition   int32                       partition of the input segment, -1 for a scan
segment_offset      int64                       offset of the input segment, -1 for a scan
weights_sha256      string                      fingerprint of the model's weights
precision           string                      the image encoder's precision (fp32, int8, ...)
preprocess          string                      how frames were fitted: ``<fit>@<resolution>``
embedding           binary                      the L2-normalised image embedding, float16
                    (in a file: fixed_size_     little-endian, ``embed_dim`` values
                    binary[2 x embed_dim])
policy_set          string                      the policy set in force (digest)
policy_versions     map<string, int32>          policy id -> version in that set
thumbnail           binary, nullable            JPEG of the model's input picture, at most
                                                128 px on its long side
pdq                 fixed_size_binary[32],      PDQ hash (256 bits) of the decoded frame, where
                    nullable                    the worker or scan hashed it (tiles share it)
pdq_quality         int16, nullable             that hash's PDQ quality, 0-100
model               string (partition)          the model's name (registry name or path)
date                date (partition)            UTC day of ``scored_at``
==================  ==========================  =================================================

Files of format 1 (before the ``pdq`` columns) stay readable: every reader sees those
columns as null there (:func:`as_file_schema` for a file read whole; the dataset scans of
:mod:`pipeline.store.query` fill them). Format 3 changed the files only: their embedding
column is ``fixed_size_binary`` of the vectors' byte width (:func:`file_table`; one file
holds one model's frames, so one width), which Parquet stores without a length per value:
pyarrow decodes it 2.3-2.9 times as fast as the binary column of earlier files (0.21 s
against 0.49-0.85 s for 700,000 512-d vectors, measured in one run), and decoding is most of
the time a first backtest or search of a store takes. Readers take both (:func:`embeddings_of`),
and DuckDB reads both as ``BLOB``.

A frame is identified by :func:`frame_id`: the model, its weights, the stream, the input
segment's partition and offset, the segment number, the frame index and the tile. A replayed
segment gives the same ids; deduplicate on ``frame_id``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from pipeline.errors import StoreError
from pipeline.hashes.signals import PDQ_BYTES
from pipeline.policies.judge import FrameRef

if TYPE_CHECKING:
    from pipeline.decode.frames import Frame

__all__ = [
    "EMBEDDING_DTYPE",
    "FILE_SCHEMA",
    "FRAME_NAMESPACE",
    "HASH_COLUMNS",
    "PARTITION_KEYS",
    "RECORD_SCHEMA",
    "STORE_FORMAT",
    "FrameHash",
    "FrameInfo",
    "as_file_schema",
    "embeddings_of",
    "file_table",
    "frame_hashes",
    "frame_id",
    "frame_table",
    "model_from_partition",
    "model_partition",
    "preprocess_id",
    "utc_day",
]

#: The version of the record layout, in every file's metadata (``clipguard.store``); 2 added
#: the nullable ``pdq`` and ``pdq_quality`` columns (format 1 files read with them null); 3
#: made a file's embedding column fixed_size_binary (records keep binary; format 2 files
#: are read as they are).
STORE_FORMAT: Final = 3
#: How an embedding is stored: float16, little-endian.
EMBEDDING_DTYPE: Final = np.dtype("<f2")
#: The uuid5 namespace of frame ids.
FRAME_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:clipguard:frame")
#: The Hive partition keys, outermost first.
PARTITION_KEYS: Final = ("model", "date")

_METADATA: Final = {
    b"clipguard.store": str(STORE_FORMAT).encode(),
    b"clipguard.embedding": b"float16 little-endian, L2-normalised, embed_dim values",
}

FILE_SCHEMA: Final = pa.schema(
    [
        pa.field("frame_id", pa.string(), nullable=False),
        pa.field("stream_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("job_id", pa.string()),
        pa.field("scored_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("frame_index", pa.int64(), nullable=False),
        pa.field("tile", pa.int16(), nullable=False),
        pa.field("segment_partition", pa.int32(), nullable=False),
        pa.field("segment_offset", pa.int64(), nullable=False),
        pa.field("weights_sha256", pa.string(), nullable=False),
        pa.field("precision", pa.string(), nullable=False),
        pa.field("preprocess", pa.string(), nullable=False),
        pa.field("embedding", pa.binary(), nullable=False),
        pa.field("policy_set", pa.string(), nullable=False),
        pa.field("policy_versions", pa.map_(pa.string(), pa.int32())),
        pa.field("thumbnail", pa.binary()),
        pa.field("pdq", pa.binary(PDQ_BYTES)),
        pa.field("pdq_quality", pa.int16()),
    ],
    metadata=_METADATA,
)
"""The columns of a Parquet file of the store (the partition keys are in its path)."""

RECORD_SCHEMA: Final = FILE_SCHEMA.append(pa.field("model", pa.string(), nullable=False))
"""A frame record with its model: what :func:`frame_table` builds and the Kafka value holds."""

#: The columns format 2 added; a format 1 file or record has every other column.
HASH_COLUMNS: Final = ("pdq", "pdq_quality")

#: A frame's PDQ hash (32 bytes) and its quality (0-100), or None where it was not hashed.
FrameHash = tuple[bytes, int] | None


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What every frame of one judged segment (or scanned input) shares."""

    model: str
    weights_sha256: str
    preprocess: str  # preprocess_id(fit, resolution)
    policy_set: str
    policy_versions: Mapping[str, int]
    stream_id: str
    scored_at: float  # Unix seconds: when it was scored
    precision: str = "fp32"  # the image encoder's
    source: str | None = None
    job_id: str | None = None
    segment_partition: int = -1
    segment_offset: int = -1


def preprocess_id(fit: str, resolution: int) -> str:
    """``"pad@224"``: how frames were fitted to the model's input, and its size."""
    return f"{fit}@{resolution}"


def frame_id(
    *,
    model: str,
    weights_sha256: str,
    stream_id: str,
    segment_partition: int,
    segment_offset: int,
    seq: int,
    frame_index: int,
    tile: int,
) -> str:
    """The frame's id: a UUID of what identifies it, so a replay of its segment (or a rescan
    of its file with the same model) gives the same id."""
    name = json.dumps(
        [
            model,
            weights_sha256,
            stream_id,
            segment_partition,
            segment_offset,
            seq,
            frame_index,
            tile,
        ],
        separators=(",", ":"),
    )
    return str(uuid.uuid5(FRAME_NAMESPACE, name))


def frame_table(
    info: FrameInfo,
    places: Sequence[FrameRef],
    embeddings: npt.ArrayLike,
    thumbnails: Sequence[bytes | None] | None = None,
    hashes: Sequence[FrameHash] | None = None,
) -> pa.Table:
    """One row per frame (or tile) of ``places``, with its row of ``embeddings`` (N, E)
    stored as float16, its thumbnail (JPEG bytes or None) and its PDQ hash and quality (or
    None), in :data:`RECORD_SCHEMA`."""
    emb = np.asarray(embeddings, dtype=np.float32)
    count = len(places)
    if emb.ndim != 2 or emb.shape[0] != count:
        raise StoreError(f"{count} frames with embeddings of shape {emb.shape}")
    if thumbnails is not None and len(thumbnails) != count:
        raise StoreError(f"{count} frames with {len(thumbnails)} thumbnails")
    pdq, quality = _hash_columns(hashes, count)
    seq = [p.seq for p in places]
    index = [p.frame_index for p in places]
    tile = [p.tile for p in places]
    ts = [p.ts for p in places]
    ids = [
        frame_id(
            model=info.model,
            weights_sha256=info.weights_sha256,
            stream_id=info.stream_id,
            segment_partition=info.segment_partition,
            segment_offset=info.segment_offset,
            seq=s,
            frame_index=i,
            tile=t,
        )
        for s, i, t in zip(seq, index, tile, strict=True)
    ]
    versions = sorted(info.policy_versions.items())
    columns = {
        "frame_id": pa.array(ids, pa.string()),
        "stream_id": pa.array([info.stream_id] * count, pa.string()),
        "source": pa.array([info.source] * count, pa.string()),
        "job_id": pa.array([info.job_id] * count, pa.string()),
        "scored_at": pa.array([round(info.scored_at * 1000)] * count, pa.int64()).cast(
            pa.timestamp("ms", tz="UTC")
        ),
        "ts": pa.array(ts, pa.float64()),
        "seq": pa.array(seq, pa.int64()),
        "frame_index": pa.array(index, pa.int64()),
        "tile": pa.array(tile, pa.int16()),
        "segment_partition": pa.array([info.segment_partition] * count, pa.int32()),
        "segment_offset": pa.array([info.segment_offset] * count, pa.int64()),
        "weights_sha256": pa.array([info.weights_sha256] * count, pa.string()),
        "precision": pa.array([info.precision] * count, pa.string()),
        "preprocess": pa.array([info.preprocess] * count, pa.string()),
        "embedding": _embedding_array(emb),
        "policy_set": pa.array([info.policy_set] * count, pa.string()),
        "policy_versions": pa.array([versions] * count, pa.map_(pa.string(), pa.int32())),
        "thumbnail": pa.array(
            list(thumbnails) if thumbnails is not None else [None] * count, pa.binary()
        ),
        "pdq": pdq,
        "pdq_quality": quality,
        "model": pa.array([info.model] * count, pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=RECORD_SCHEMA)


def frame_hashes(frames: Sequence[Frame]) -> list[FrameHash] | None:
    """The ``hashes`` of :func:`frame_table` for decoded ``frames``: each one's own PDQ hash
    (not its mirrors) and quality; None when no frame was hashed."""
    if all(f.pdq is None for f in frames):
        return None
    return [None if f.pdq is None else (f.pdq.original, f.pdq.quality) for f in frames]


def _hash_columns(hashes: Sequence[FrameHash] | None, count: int) -> tuple[pa.Array, pa.Array]:
    """The ``pdq`` and ``pdq_quality`` columns of ``count`` rows (all null without hashes)."""
    if hashes is None:
        return pa.nulls(count, pa.binary(PDQ_BYTES)), pa.nulls(count, pa.int16())
    if len(hashes) != count:
        raise StoreError(f"{count} frames with {len(hashes)} PDQ hashes")
    for h in hashes:
        if h is not None and (len(h[0]) != PDQ_BYTES or not 0 <= h[1] <= 100):
            raise StoreError(f"not a PDQ hash and quality: {len(h[0])} bytes, quality {h[1]}")
    pdq = pa.array([None if h is None else h[0] for h in hashes], pa.binary(PDQ_BYTES))
    quality = pa.array([None if h is None else h[1] for h in hashes], pa.int16())
    return pdq, quality


def as_file_schema(table: pa.Table) -> pa.Table:
    """A table read from a frame file of any format (:data:`STORE_FORMAT`) with the columns
    of :data:`FILE_SCHEMA`: the ``pdq`` columns a format 1 file lacks are added, null."""
    for name in HASH_COLUMNS:
        if name not in table.column_names:
            field = FILE_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(FILE_SCHEMA.names).cast(FILE_SCHEMA)


def file_table(table: pa.Table) -> pa.Table:
    """``table`` (:data:`FILE_SCHEMA`) as a file of the current format holds it: the
    embeddings as one ``fixed_size_binary`` column of their byte width (checked: every vector
    of one size, none missing). A table without rows is left as it is."""
    if table.num_rows == 0:
        return table
    at = table.schema.get_field_index("embedding")
    emb = np.ascontiguousarray(embeddings_of(table.column(at)))
    width = emb.shape[1] * EMBEDDING_DTYPE.itemsize
    column = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(emb), [None, pa.py_buffer(emb)]
    )
    return table.set_column(at, pa.field("embedding", pa.binary(width), nullable=False), column)


def _embedding_array(emb: npt.NDArray[np.float32]) -> pa.Array:
    """(N, E) -> a binary array of N float16 little-endian vectors, without a copy per row."""
    count, dim = emb.shape
    data = np.ascontiguousarray(emb.astype(EMBEDDING_DTYPE))
    offsets = np.arange(count + 1, dtype=np.int32) * (dim * EMBEDDING_DTYPE.itemsize)
    return pa.Array.from_buffers(
        pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def embeddings_of(column: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.float16]:
    """The (N, E) float16 embeddings of an ``embedding`` column, binary or fixed-size (views
    of its buffers where it is one chunk). :class:`StoreError` when the vectors are not all
    of one size."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = [_chunk_embeddings(c) for c in chunks if len(c)]
    if not parts:
        return np.zeros((0, 0), dtype=EMBEDDING_DTYPE)
    dims = {p.shape[1] for p in parts}
    if len(dims) != 1:
        raise StoreError(f"embeddings of several sizes in one column: {sorted(dims)}")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _chunk_embeddings(chunk: pa.Array) -> npt.NDArray[np.float16]:
    if chunk.null_count:
        raise StoreError("an embedding is missing (null)")
    if pa.types.is_fixed_size_binary(chunk.type):  # files of format 3
        width = chunk.type.byte_width
        if width <= 0 or width % EMBEDDING_DTYPE.itemsize:
            raise StoreError("embeddings of an odd byte size (not float16 vectors)")
        data_buf = chunk.buffers()[1]
        assert data_buf is not None
        start = chunk.offset * width
        data = np.frombuffer(data_buf, dtype=np.uint8)[start : start + len(chunk) * width]
        return data.view(EMBEDDING_DTYPE).reshape(len(chunk), width // EMBEDDING_DTYPE.itemsize)
    if pa.types.is_large_binary(chunk.type):
        chunk = chunk.cast(pa.binary())
    if not pa.types.is_binary(chunk.type):
        raise StoreError(f"the embedding column is {chunk.type}, not binary")
    _, offsets_buf, data_buf = chunk.buffers()
    assert offsets_buf is not None and data_buf is not None
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[
        chunk.offset : chunk.offset + len(chunk) + 1
    ]
    width = int(offsets[1] - offsets[0])
    if width <= 0 or width % EMBEDDING_DTYPE.itemsize or np.any(np.diff(offsets) != width):
        raise StoreError("embeddings of different or odd byte sizes (not float16 vectors)")
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
    dim = width // EMBEDDING_DTYPE.itemsize
    return data.view(EMBEDDING_DTYPE).reshape(len(chunk), dim)  # (N * 2E bytes) -> (N, E)


def model_partition(model: str) -> str:
    """The model's name as a Hive partition value (percent-encoded: ``ViT-B%2F32``)."""
    return quote(model, safe="")


def model_from_partition(value: str) -> str:
    """The model's name back from its partition value."""
    return unquote(value)


def utc_day(at: float) -> str:
    """``YYYY-MM-DD`` of Unix seconds ``at``, in UTC."""
    return dt.datetime.fromtimestamp(at, dt.UTC).date().isoformat()
