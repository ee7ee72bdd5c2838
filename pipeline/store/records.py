"""The frame store's Kafka records: what a worker publishes on ``clipguard.embeddings``.

Two kinds, told apart by the ``clipguard.kind`` header:

- ``frames``: the scored frames of one segment as one Apache Arrow IPC stream holding a
  record batch of :data:`~pipeline.store.schema.RECORD_SCHEMA` (float16 embeddings and JPEG
  thumbnails as binary columns: no JSON floats). Key: the stream id.
- ``policy-set``: a policy set snapshot (:mod:`pipeline.store.policysets`), published once per
  set to every partition so that every sink keeps it beside the frames. Key: the set's id.

The layout is in ``schemas/embeddings.md``. Arrow's IPC format is what the sink appends to
Parquet without re-encoding; a reader validates the schema and every buffer before use.
"""

from __future__ import annotations

from typing import Final

import pyarrow as pa

from pipeline.errors import StoreError
from pipeline.store.schema import HASH_COLUMNS, RECORD_SCHEMA

__all__ = [
    "KIND_FRAMES",
    "KIND_HEADER",
    "KIND_POLICY_SET",
    "MAX_RECORD_BYTES",
    "frames_value",
    "read_frames_value",
]

KIND_HEADER: Final = "clipguard.kind"
KIND_FRAMES: Final = b"frames"
KIND_POLICY_SET: Final = b"policy-set"
# A format 1 record (a worker from before the ``pdq`` columns): read with them null.
_FORMAT_1: Final = pa.schema(
    [f for f in RECORD_SCHEMA if f.name not in HASH_COLUMNS], metadata=RECORD_SCHEMA.metadata
)
#: The largest record a sink reads (a segment of a few hundred frames with thumbnails).
MAX_RECORD_BYTES: Final = 32 * 1024 * 1024


def frames_value(table: pa.Table) -> bytes:
    """A ``frames`` record's value: ``table`` (:data:`RECORD_SCHEMA`) as an Arrow IPC stream."""
    if not table.schema.equals(RECORD_SCHEMA, check_metadata=False):
        raise StoreError("frames to publish must have the store's record schema")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, RECORD_SCHEMA) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def read_frames_value(data: bytes, *, where: str = "frames record") -> pa.Table:
    """The frames of a ``frames`` record; :class:`StoreError` naming ``where`` when it is over
    :data:`MAX_RECORD_BYTES`, not an Arrow stream, of another schema, or inconsistent. A
    record of format 1 (no ``pdq`` columns) is read with those columns null."""
    if len(data) > MAX_RECORD_BYTES:
        raise StoreError(f"{where}: {len(data)} bytes, over the limit of {MAX_RECORD_BYTES}")
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            table = reader.read_all()
        if table.schema.equals(_FORMAT_1, check_metadata=False):
            for name in HASH_COLUMNS:
                field = RECORD_SCHEMA.field(name)
                table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            table = table.select(RECORD_SCHEMA.names)
        if not table.schema.equals(RECORD_SCHEMA, check_metadata=False):
            raise StoreError(f"{where}: not the store's record schema")
        table.validate(full=True)
    except (pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"{where}: not a valid Arrow frames record: {e}") from e
    return table.cast(RECORD_SCHEMA)
