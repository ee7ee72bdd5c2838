"""Stored frame embeddings: every scored frame kept, so policy edits can be backtested on past
traffic, enforced retroactively, and frames searched by text or image.

The store is Apache Parquet in Hive partitions, ``<root>/model=<name>/date=YYYY-MM-DD/*.parquet``
(on a local folder or any filesystem pyarrow reaches: ``s3://``, ``gs://``...), one row per
scored frame or tile (:mod:`pipeline.store.schema`: stream, source, job, times, segment
partition and offset, model, weights SHA-256, precision, preprocessing, the L2-normalised
embedding as float16, the policy set in force and its versions, a JPEG thumbnail, the frame's
PDQ hash and quality where it was hashed). DuckDB
queries it in process; Spark, Trino or Athena read the same files. Policy set snapshots sit
beside the frames in ``_policy_sets/`` (:mod:`pipeline.store.policysets`).

Reading (the API the studio and the commands use)::

    from pipeline.store import FrameFilter, open_store
    store = open_store("demo-output/store")          # FrameStore; nothing is created
    store.models()                                   # ["clipguard-demo"]
    flt = FrameFilter(model="clipguard-demo", since=dt.datetime(2026, 11, 1),
                      streams=("cam-7",))
    frames = store.frames(flt)                       # Arrow table: every column but the
                                                     # embeddings and thumbnails
    ids, emb = store.embeddings(flt)                 # frame ids, (N, E) float16
    store.thumbnails(["<frame id>", ...])            # frame id -> JPEG bytes
    store.thumbnails_at([("cam-7", seq, frame_index, tile)])   # place -> JPEG bytes
    store.sql("SELECT stream_id, count(*) FROM frames WHERE {where} GROUP BY 1", flt=flt)
    store.policy_set("<policy set id>")              # StoredPolicySet (snapshot) or None

Backtesting a policy edit (:mod:`pipeline.store.backtest`)::

    from pipeline.store import backtest
    result = backtest(edited_policy_set, store, model="clipguard-demo",
                      weights_sha256=model.fingerprint(), flt=flt, against=None,
                      cache=True)               # the cosine cache in <store>/_cache/ (local
                                                # stores); False: none; or a CosineCache
    result.added, result.removed, result.changed     # incidents, per label in result.labels
    result.to_json()                                 # the report's data
    retro_events(result)                             # FlagEvents, retro: true, live ids

Matching hash banks against stored frames (:mod:`pipeline.store.bankmatch`; imported by its
own name: it loads the hashing libraries)::

    from pipeline.store.bankmatch import match_stored_frames
    found = match_stored_frames(store, bank_snapshot.matcher, banks=["known"], flt=flt)
    found.frames, found.hashed, found.matches        # StoredMatch: frame, stream, ts, entry

Backtesting hash policies (:mod:`pipeline.store.hashbacktest`, imported by its own name too):
the same :class:`BacktestResult`, each incident with the bank entry matched at its peak::

    from pipeline.store.hashbacktest import backtest_hashes
    result = backtest_hashes(load_policies(["edited/"]), store, bank_snapshot, flt=flt)

Searching (:mod:`pipeline.store.search`)::

    from pipeline.store import search
    hits = search(store, query_embedding, model="clipguard-demo", top=50, flt=flt)
    hits[0].frame_id, hits[0].score, hits[0].stream_id, hits[0].ts

Writing: :class:`FrameRecorder` (scans, the demo) and :class:`StoreWriter` (any table of
records, the Kafka sink); lifecycle: :func:`stats`, :func:`prune`, :func:`delete_streams`.
Thumbnails show what was flagged, harmful content included: who may read a store is a
deployment decision (README, "Stored frames").
"""

from __future__ import annotations

from pipeline.store.backtest import BacktestResult, Incident, LabelDiff, backtest
from pipeline.store.lifecycle import StoreStats, delete_streams, prune, stats
from pipeline.store.location import StoredFile, StoreLocation, open_location
from pipeline.store.policysets import StoredPolicySet, read_snapshot, snapshot_bytes
from pipeline.store.query import FrameFilter, FrameStore, open_store
from pipeline.store.recorder import FrameRecorder, scan_file_name
from pipeline.store.retro import retro_events
from pipeline.store.schema import FILE_SCHEMA, RECORD_SCHEMA, FrameInfo, frame_id, frame_table
from pipeline.store.search import SearchHit, search
from pipeline.store.thumbnails import THUMBNAIL_SIZE
from pipeline.store.writer import StoreWriter

__all__ = [
    "FILE_SCHEMA",
    "RECORD_SCHEMA",
    "THUMBNAIL_SIZE",
    "BacktestResult",
    "FrameFilter",
    "FrameInfo",
    "FrameRecorder",
    "FrameStore",
    "Incident",
    "LabelDiff",
    "SearchHit",
    "StoreLocation",
    "StoreStats",
    "StoreWriter",
    "StoredFile",
    "StoredPolicySet",
    "backtest",
    "delete_streams",
    "frame_id",
    "frame_table",
    "open_location",
    "open_store",
    "prune",
    "read_snapshot",
    "retro_events",
    "scan_file_name",
    "search",
    "snapshot_bytes",
    "stats",
]
