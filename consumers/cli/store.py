"""``clipguard store``: search, stats, prune and delete in a frame store, and
``clipguard policy backtest`` (added to the policy group by :mod:`consumers.cli.policy`).

The store is :mod:`pipeline.store`; this module parses options, picks the model (the one
``--model`` names, else the one the policies name, else the store's only one), writes the JSON
and HTML outputs and prints a summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumers.argtypes import positive_float, positive_int
from consumers.cli.common import (
    DEFAULT_BOOTSTRAP,
    add_banks_option,
    add_bootstrap_servers,
    add_command,
    add_group,
    load_model,
    plural,
    quiet_kafka,
)
from consumers.kafka_auth import client_security

if TYPE_CHECKING:
    from pipeline.models.base import ImageTextModel
    from pipeline.policies import LoadedPolicies
    from pipeline.store import BacktestResult, FrameFilter, FrameStore

__all__ = ["add_backtest_parser", "add_parser", "when"]

_EPILOG = """\
examples:
  clipguard scan uploads/ --store frames/          keep every scored frame
  clipguard store stats --store frames/
  clipguard store search "a red triangle" --store frames/ --top 20 --out search-out
  clipguard store search query.png --store frames/  nearest frames to a picture
  clipguard store prune --store frames/ --before 2026-10-01
  clipguard store delete --store frames/ --stream cam-7
  clipguard policy backtest pipeline/policies/data/demo/red-triangle.yaml --store frames/

Stored thumbnails show the frames policies flag, harmful content included: keep a store
where only the people allowed to see that content can read it.
"""


#: pipeline.store.groundtruth.RULE (the same words; not imported: the store package loads
#: slowly, and the help is read without it).
_RULE = (
    "incident level, per label: an incident that overlaps a span reviewers marked correct "
    "(same stream, the spans meet) is a true positive; one that overlaps only spans marked "
    "incorrect is a false positive; a span marked correct that no incident overlaps is a false "
    "negative. Precision = TP / (TP + FP); recall = correct spans overlapped / correct spans. "
    "Incidents that overlap no reviewed span, and spans marked unsure, are not scored."
)


def when(text: str) -> dt.datetime:
    """An ISO date or date and time (UTC unless it says otherwise), for ``--since``."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date (YYYY-MM-DD): {text!r}") from None


def _add_store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store", required=True, metavar="DIR", help="the store: a folder or a pyarrow URI"
    )


def _add_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=when, metavar="TIME", help="frames scored from then")
    parser.add_argument("--until", type=when, metavar="TIME", help="frames scored before then")
    parser.add_argument(
        "--stream", action="append", default=[], metavar="ID", help="only this stream (repeat)"
    )


def add_parser(subparsers: Any) -> None:
    """Add ``clipguard store {search,stats,prune,delete,sink}``."""
    _, commands = add_group(
        subparsers,
        "store",
        help="search, inspect and prune the store of scored frames",
        description="The frame store keeps every scored frame's embedding and thumbnail "
        "(clipguard scan --store): search it by text or image, see what it holds, drop old "
        "days or one stream's frames.",
        epilog=_EPILOG,
    )
    search = add_command(
        commands,
        "search",
        help="the stored frames nearest to a text or a picture",
        description="Embed QUERY (a picture file when one exists at that path, else text) "
        "with the store's model and list the nearest stored frames by cosine; with --out, "
        "also search.json and gallery.html (thumbnails).",
    )
    search.add_argument("query", metavar="TEXT|IMAGE")
    _add_store(search)
    search.add_argument("--model", metavar="NAME|PATH", help="default: the store's only model")
    search.add_argument("--top", type=positive_int, default=50, metavar="N")
    _add_range(search)
    search.add_argument("--out", metavar="DIR", help="write search.json and gallery.html here")
    cache = search.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep the stored embeddings as raw float16 here, so a search reads them instead "
        "of decoding Parquet (default: _cache/matrices in a store on this machine; none for "
        "other filesystems)",
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the matrix cache"
    )
    search.set_defaults(func=_search)

    stats = add_command(
        commands,
        "stats",
        help="frames, streams, size, models, dates",
        description="What the "
        "store holds: frames, streams, files, bytes, models and the time range.",
    )
    _add_store(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)

    prune = add_command(
        commands,
        "prune",
        help="remove the frames of days before a date",
        description="Retention: remove every frame file of a day before --before (UTC).",
    )
    _add_store(prune)
    prune.add_argument("--before", type=_day, required=True, metavar="YYYY-MM-DD")
    prune.set_defaults(func=_prune)

    delete = add_command(
        commands,
        "delete",
        help="remove one stream's or source's frames",
        description="Remove every stored frame of the streams and sources named, rewriting "
        "the files that hold them.",
    )
    _add_store(delete)
    delete.add_argument("--stream", action="append", default=[], metavar="ID")
    delete.add_argument("--source", action="append", default=[], metavar="PATH|URL")
    delete.set_defaults(func=_delete)

    sink = add_command(
        commands,
        "sink",
        help="write the workers' embeddings topic to the store",
        description="A consumer group member that reads clipguard.embeddings (workers with "
        "store_embeddings on publish it) and writes Parquet files named after partition and "
        "offset ranges, committing offsets only once a file is in place. Run more to share "
        "the partitions; SIGTERM flushes, commits and exits.",
    )
    _add_store(sink)
    add_bootstrap_servers(
        sink, metavar="HOST:PORT[,...]", default=DEFAULT_BOOTSTRAP, help="Kafka brokers"
    )
    sink.add_argument("--topic", default="clipguard.embeddings")
    sink.add_argument("--group-id", default="clipguard-store-sink")
    sink.add_argument(
        "--batch-rows",
        type=positive_int,
        default=50_000,
        metavar="N",
        help="write when this many frames are buffered (default: %(default)s)",
    )
    sink.add_argument(
        "--max-wait",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="... or when the oldest buffered frame is this old (default: %(default)s)",
    )
    sink.add_argument("--idle-exit", type=positive_float, metavar="S", help=argparse.SUPPRESS)
    sink.set_defaults(func=_sink)


def add_backtest_parser(commands: Any) -> None:
    """Add ``clipguard policy backtest`` to the policy group's ``commands``."""
    backtest = add_command(
        commands,
        "backtest",
        help="what a policy edit would have flagged in stored frames",
        description="Re-score the stored frames of the policies' model with POLICY (files or "
        "folders: the edited set), run its temporal rules per stream, and compare with the "
        "policy sets in force when the frames were stored (or --against): incidents added, "
        "removed and changed per label, score distributions, and precision and recall against "
        "the review labels of the policy studio (--labels). Writes backtest.json and "
        "report.html into --out. Frames of another model or other weights are refused. Hash "
        "policies (kind: hash) re-match the frames' stored PDQ hashes against --banks with "
        "their distance and quality thresholds, frames of any model (or --model's).",
    )
    backtest.add_argument("paths", nargs="+", metavar="POLICY", help="policy files or folders")
    _add_store(backtest)
    backtest.add_argument("--model", metavar="NAME|PATH", help="default: the policies' model")
    add_banks_option(
        backtest,
        help="hash bank files (*.bank.tsv) or folders, for hash policies (the same banks for "
        "the edited policies and the deployed ones: banks have no history)",
    )
    _add_range(backtest)
    backtest.add_argument(
        "--against", nargs="+", metavar="PATH", help="compare with these policies instead"
    )
    backtest.add_argument("--out", default="clipguard-backtest", metavar="DIR")
    cache = backtest.add_mutually_exclusive_group()
    cache.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep the frames' cosines with the policies' prompts here, so a re-run with "
        "edited thresholds reads them instead of the embeddings (default: _cache/cosines in "
        "a store on this machine; none for other filesystems)",
    )
    cache.add_argument(
        "--no-cache", action="store_true", help="neither read nor write the cosine cache"
    )
    labels = backtest.add_mutually_exclusive_group()
    labels.add_argument(
        "--labels",
        metavar="PATH",
        help="the policy studio's labels database, as ground truth (default: the store's "
        "_labels.sqlite, where the studio keeps them for a store on this machine, if present): "
        "per label, precision and recall of the edited and the deployed policies at " + _RULE,
    )
    labels.add_argument(
        "--no-labels", action="store_true", help="do not read review labels, even the store's"
    )
    backtest.add_argument(
        "--publish",
        action="store_true",
        help="send the incidents found (enforce mode) to the flags topic as closed flag events "
        "marked retro: true, with the live event ids (a replay duplicates nothing)",
    )
    add_bootstrap_servers(
        backtest,
        metavar="HOST:PORT[,...]",
        default=DEFAULT_BOOTSTRAP,
        help="Kafka brokers, for --publish (default: %(default)s)",
    )
    backtest.add_argument("--flags-topic", default="clipguard.flags", help=argparse.SUPPRESS)
    backtest.set_defaults(func=_backtest)


# --------------------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> FrameStore:
    from pipeline.store import open_store

    return open_store(args.store)


def _filter(args: argparse.Namespace, model: str | None) -> FrameFilter:
    from pipeline.store import FrameFilter

    return FrameFilter(model=model, since=args.since, until=args.until, streams=tuple(args.stream))


def _pick_model(args: argparse.Namespace, store: FrameStore, named: set[str]) -> ImageTextModel:
    from pipeline.errors import ConfigError

    if args.model:
        name = args.model
    elif len(named) == 1:
        name = next(iter(named))
    else:
        models = store.models()
        if len(models) != 1:
            held = ", ".join(models) or "none"
            raise ConfigError(f"say which model with --model (the store holds: {held})")
        name = models[0]
    model, _ = load_model(name)
    return model


def _labels_database(args: argparse.Namespace) -> Path | None:
    """The labels database to score the backtest against: --labels, else the store's own."""
    from pipeline.store.location import LABELS_FILE

    if args.no_labels:
        return None
    if args.labels:
        return Path(args.labels)
    if "://" in args.store:
        return None
    beside = Path(args.store) / LABELS_FILE
    return beside if beside.is_file() else None


def _backtest(args: argparse.Namespace) -> int:
    from pipeline.policies import load_policies
    from pipeline.store.hashbacktest import combine
    from pipeline.store.report import render_backtest

    store = _open(args)
    policies = load_policies(args.paths)
    against = load_policies(args.against) if args.against else None
    results = []
    # the cosine cache is written behind: the results print first, the command ends after it
    cosines = _cosine_cache(args, store)
    if len(policies):  # CLIP policies
        results.append(_clip_backtest(args, store, policies, against, cosines))
    # hash policies: beside CLIP ones, the frames of their model; alone, of any (or --model)
    model = results[0].model if results else args.model
    if policies.hashes:
        results.append(_hash_backtest(args, store, policies, against, model))
    result = results[0] if len(results) == 1 else combine(*results)
    flt = _filter(args, model)
    reviewed = _labels_database(args)
    if reviewed is not None:
        from pipeline.store.groundtruth import read_reviews, review_scores

        result.review = review_scores(result, read_reviews(reviewed), source=str(reviewed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backtest.json").write_text(json.dumps(result.to_json(), indent=1) + "\n")
    page = render_backtest(result, thumbnails=lambda places: store.thumbnails_at(places, flt))
    (out / "report.html").write_text(page)
    for key, d in sorted(result.labels.items()):
        print(
            f"{key}: {d.incidents} incidents (before {d.baseline_incidents}): "
            f"+{len(d.added)} added, -{len(d.removed)} removed, {len(d.changed)} changed"
        )
    if result.review is not None:
        _print_review(result.review)
    print(
        f"backtest: {plural(result.frames, 'frame')} of {plural(len(result.streams), 'stream')}"
        f" in {result.seconds:.2f} s; {out / 'backtest.json'}, {out / 'report.html'}"
    )
    if args.publish:
        sent = _publish(args, result)
        print(f"published {plural(sent, 'retro flag event')} to {args.flags_topic}")
    if result.other_weights:
        print(
            f"note: {plural(result.other_weights, 'stored frame')} of {result.model} scored "
            "with other weights were left out",
            file=sys.stderr,
        )
    if cosines and cosines.writing:
        print("writing the cosine cache for the next run...", file=sys.stderr, flush=True)
        cosines.flush()
    return 0


def _print_review(review: Any) -> None:
    def ratio(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for key, r in sorted(review.labels.items()):
        e, d = r.edited, r.deployed
        print(
            f"{key}: {plural(r.labelled, 'reviewed incident')}: precision {ratio(e.precision)}, "
            f"recall {ratio(e.recall)} (before {ratio(d.precision)}, {ratio(d.recall)})"
        )
    print(f"review labels from {review.source}, scored at {review.rule}")


def _clip_backtest(
    args: argparse.Namespace,
    store: FrameStore,
    policies: LoadedPolicies,
    against: LoadedPolicies | None,
    cosines: Any,
) -> BacktestResult:
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.store import backtest

    named = {lp.policy.model for lp in policies if lp.policy.model is not None}
    model = _pick_model(args, store, named)
    compiler = PolicyCompiler(model)
    return backtest(
        compiler.compile(policies),
        store,
        model=model.name,
        weights_sha256=model.fingerprint(),
        flt=_filter(args, model.name),
        against=None if against is None else compiler.compile(against),
        cache=cosines or False,
        write_behind=True,
    )


def _matrix_cache(args: argparse.Namespace) -> Any:
    """The matrix cache --cache-dir or --no-cache asks for (True: the store's own)."""
    if args.no_cache:
        return False
    if args.cache_dir:
        from pipeline.store.matrixcache import MatrixCache

        return MatrixCache(Path(args.cache_dir).expanduser())
    return True


def _cosine_cache(args: argparse.Namespace, store: FrameStore) -> Any:
    """The cosine cache --cache-dir or --no-cache asks for (by default the store's own; None:
    none)."""
    from pipeline.store.cosinecache import CosineCache

    if args.no_cache:
        return None
    if args.cache_dir:
        return CosineCache(Path(args.cache_dir).expanduser())
    return CosineCache.beside(store.location)


def _hash_backtest(
    args: argparse.Namespace,
    store: FrameStore,
    policies: LoadedPolicies,
    against: LoadedPolicies | None,
    model: str | None,
) -> BacktestResult:
    """The hash policies' backtest: the stored frames' (of ``model``, None: any) PDQ hashes
    against --banks."""
    from pipeline.errors import ConfigError
    from pipeline.hashes.store import BankStore
    from pipeline.policies.hashing import check_banks
    from pipeline.store.hashbacktest import backtest_hashes

    if not args.banks:
        ids = ", ".join(hp.policy.id for hp in policies.hashes)
        raise ConfigError(f"hash policies ({ids}) need --banks: the bank files or folders")
    banks = BankStore(args.banks).snapshot
    check_banks(policies.hashes, frozenset(banks.banks))
    for hp in policies.hashes:
        if hp.policy.dihedral:
            print(
                f"note: {hp.policy.id} matches mirrors and rotations live (dihedral); stored "
                "frames keep their own hash only, so those matches are not found here",
                file=sys.stderr,
            )
    result = backtest_hashes(
        policies,
        store,
        banks,
        flt=_filter(args, model),
        against=against,
        allow_empty=bool(len(policies)),  # beside CLIP policies: theirs is still worth having
    )
    if not result.frames:
        print(
            f"note: none of the {plural(result.rows, 'stored frame')} has a PDQ hash: the hash "
            "policies found nothing",
            file=sys.stderr,
        )
    return result


def _publish(args: argparse.Namespace, result: Any) -> int:
    """Send the result's retro flag events; every one acknowledged, or a ClipguardError."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from pipeline.errors import StoreError
    from pipeline.store.retro import retro_events

    quiet_kafka(args.log_level)
    events = retro_events(result)
    try:
        producer = KafkaProducer(
            bootstrap_servers=args.bootstrap_servers.split(","),
            acks="all",
            retries=5,
            **client_security(),
        )
    except KafkaError as e:
        raise StoreError(f"cannot reach Kafka at {args.bootstrap_servers}: {e}") from e
    try:
        futures = [
            producer.send(args.flags_topic, key=e.stream_id.encode(), value=e.to_json())
            for e in events
        ]
        producer.flush(timeout=60)
        for f in futures:
            f.get(timeout=60)
    except KafkaError as e:
        raise StoreError(f"publishing retro flag events failed: {e}") from e
    finally:
        producer.close(timeout=10)
    return len(events)


def _search(args: argparse.Namespace) -> int:
    from pipeline.policies.compile import PolicyCompiler
    from pipeline.store import search
    from pipeline.store.report import render_gallery

    store = _open(args)
    model = _pick_model(args, store, set())
    compiler = PolicyCompiler(model)
    picture = Path(args.query)
    is_file = picture.is_file()
    query = (compiler.encode_images([picture]) if is_file else compiler.encode_text([args.query]))[
        0
    ]
    flt = _filter(args, model.name)
    # the matrix cache is written behind: the results print first, the process ends after it
    cache = _matrix_cache(args)
    hits = search(
        store, query, model=model.name, top=args.top, flt=flt, cache=cache, write_behind=True
    )
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>4}  {hit.score:.4f}  {hit.stream_id}  {hit.ts:.2f}s  {hit.frame_id}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        doc = {
            "query": args.query,
            "image": is_file,
            "model": model.name,
            "hits": [h.to_json() for h in hits],
        }
        (out / "search.json").write_text(json.dumps(doc, indent=1) + "\n")
        thumbs = store.thumbnails([h.frame_id for h in hits], flt)
        page = render_gallery(args.query, hits, thumbnails=thumbs, model=model.name)
        (out / "gallery.html").write_text(page)
        print(f"search: {out / 'search.json'}, {out / 'gallery.html'}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from pipeline.store import stats

    s = stats(_open(args))
    if args.json:
        print(json.dumps(s.to_json(), indent=1))
        return 0
    print(f"frames: {s.frames} ({s.thumbnails} with thumbnails)")
    print(f"streams: {s.streams}")
    print(f"files: {s.files}, {s.bytes / 1e6:.1f} MB")
    for model, frames in s.models.items():
        print(f"model {model}: {frames} frames")
    first = "-" if s.first is None else s.first.isoformat(timespec="seconds")
    last = "-" if s.last is None else s.last.isoformat(timespec="seconds")
    print(f"scored: {first} to {last}")
    print(f"policy sets: {s.policy_sets}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from pipeline.store import prune

    removed = prune(_open(args), args.before)
    print(f"prune: removed {plural(len(removed), 'file')} of days before {args.before}")
    return 0


def _sink(args: argparse.Namespace) -> int:
    import signal

    from consumers.sink import StoreSink
    from pipeline.store import StoreWriter

    quiet_kafka(args.log_level)
    sink = StoreSink(
        StoreWriter(args.store),
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        group_id=args.group_id,
        batch_rows=args.batch_rows,
        max_wait_s=args.max_wait,
        consumer_config=client_security(),
    )
    signal.signal(signal.SIGTERM, lambda *_: sink.stop())
    print(f"sink: {args.topic} -> {args.store} (group {args.group_id})", flush=True)
    s = sink.run(idle_s=args.idle_exit)
    print(
        f"sink: {s.records} records, {s.frames} frames in {s.files} files, "
        f"{s.snapshots} policy sets, {s.skipped} skipped, {s.commits} commits",
        flush=True,
    )
    return 0


def _delete(args: argparse.Namespace) -> int:
    from pipeline.store import delete_streams

    rows = delete_streams(_open(args), args.stream, sources=args.source)
    print(f"delete: removed {plural(rows, 'frame')}")
    return 0
