"""The store's prepared answers kept on disk (``prepared/`` in the studio's data folder), so
that a restarted studio answers Tune, its live count and Backtest at once instead of after
seconds of work at a million stored frames.

Each answer is filed under its question, which needs neither the model nor a pass over the
store: the policy files' bytes (SHA-256), the model's name, the store's files (names and
sizes, as :meth:`~consumers.studio.store_link.StoreLink.stamp` lists them) and, for a
backtest, the banks. The record also names what the answer was computed with (the compiled
policy set's id, which hashes the prompts' embeddings, and the model's weights): once the
model is loaded the warmer (:mod:`consumers.studio.warm`) checks them and drops a record
made under other weights.

- stored-traffic scores (:class:`~consumers.studio.traffic.TrafficScores`): NumPy arrays in
  one ``.npz`` (read without pickle), its labels' rules as JSON;
- backtest results: a pickle read back by an unpickler that builds only the store's result
  classes and dates (anything else in the file refuses it);
- the regression examples' scores: JSON.

A record that does not read (cut short, tampered with, over :data:`MAX_BYTES`) is deleted
and the answer computed again. The newest :data:`KEPT_FILES` records are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from consumers.studio.scoring import LabeledScore
from consumers.studio.traffic import LabelTraffic, TrafficScores, order_of
from pipeline.policies.schema import Temporal

__all__ = ["KEPT_FILES", "MAX_BYTES", "KeptAnswers"]

_log = logging.getLogger(__name__)

#: Records kept (the newest; older ones are deleted as new ones are written).
KEPT_FILES: Final = 32
#: A record larger than this is not read (about 60 bytes a stored frame and label).
MAX_BYTES: Final = 2 << 30
_RESULT_CLASSES: Final = frozenset(
    {
        ("pipeline.store.results", "BacktestResult"),
        ("pipeline.store.results", "Incident"),
        ("pipeline.store.results", "LabelDiff"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
    }
)


class _ResultUnpickler(pickle.Unpickler):
    """Builds only a backtest result's own classes (and dates)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _RESULT_CLASSES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a backtest result")


class KeptAnswers:
    """Records in ``folder`` (made on first write)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def name(question: tuple[Any, ...]) -> str:
        """The file name (without suffix) of ``question``: a hash of its parts."""
        return hashlib.sha256(repr(question).encode()).hexdigest()[:40]

    # -- stored-traffic scores ------------------------------------------------------------------

    def traffic(self, question: tuple[Any, ...], kernel: Any) -> tuple[tuple[Any, ...], Any]:
        """``(made with, scores)`` kept for ``question``, or ``((), None)``."""
        found = self._read(question, ".npz", lambda data: _traffic_from(data, kernel))
        return found if found is not None else ((), None)

    def put_traffic(
        self, question: tuple[Any, ...], made_with: tuple[Any, ...], scores: TrafficScores
    ) -> None:
        arrays = _traffic_arrays(scores)
        meta = {"made_with": list(made_with), **arrays.pop("meta")}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

        def write(out: io.BufferedWriter) -> None:
            np.savez(out, **arrays)

        self._write(question, ".npz", write)

    # -- backtest results ---------------------------------------------------------------------

    def result(self, question: tuple[Any, ...]) -> Any:
        """The backtest result kept for ``question``, or None."""
        return self._read(question, ".pickle", _result_from)

    def put_result(self, question: tuple[Any, ...], result: Any) -> None:
        self._write(question, ".pickle", lambda out: pickle.dump(result, out, protocol=5))

    # -- regression examples ------------------------------------------------------------------

    def examples(self, question: tuple[Any, ...]) -> list[LabeledScore] | None:
        found: list[LabeledScore] | None = self._read(question, ".json", _examples_from)
        return found

    def put_examples(self, question: tuple[Any, ...], examples: list[LabeledScore]) -> None:
        data = [[e.path, e.label, e.positive, e.score, e.margin_ok] for e in examples]
        self._write(question, ".json", lambda out: out.write(json.dumps(data).encode()))

    def drop(self, question: tuple[Any, ...], suffix: str) -> None:
        (self.folder / (self.name(question) + suffix)).unlink(missing_ok=True)

    # -- files --------------------------------------------------------------------------------

    def _read(self, question: tuple[Any, ...], suffix: str, parse: Callable[[Any], Any]) -> Any:
        path = self.folder / (self.name(question) + suffix)
        try:
            if path.stat().st_size > MAX_BYTES:
                raise ValueError(f"over {MAX_BYTES} bytes")
            with path.open("rb") as f:
                out = parse(f)
            path.touch()  # used: among the newest
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError) as e:
            return self._unreadable(path, e)
        except (pickle.UnpicklingError, zipfile.BadZipFile, AttributeError) as e:
            return self._unreadable(path, e)
        return out

    @staticmethod
    def _unreadable(path: Path, e: Exception) -> None:
        _log.warning("studio: a kept answer (%s) does not read, computing it again: %s", path, e)
        path.unlink(missing_ok=True)

    def _write(self, question: tuple[Any, ...], suffix: str, write: Callable[[Any], Any]) -> None:
        """Write atomically (a temporary file renamed), then delete the oldest records."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out:
                    write(out)
                os.replace(tmp, self.folder / (self.name(question) + suffix))
            finally:
                Path(tmp).unlink(missing_ok=True)
            records = sorted(
                (p for p in self.folder.iterdir() if p.suffix in (".npz", ".pickle", ".json")),
                key=lambda p: p.stat().st_mtime_ns,
            )
            for old in records[:-KEPT_FILES]:
                old.unlink(missing_ok=True)
        except OSError as e:  # a full or read-only disk: the answer stays in memory only
            _log.warning("studio: could not keep a prepared answer in %s: %s", self.folder, e)


def _traffic_arrays(scores: TrafficScores) -> dict[str, Any]:
    """The arrays of ``scores`` (and a ``meta`` mapping), as :func:`_traffic_from` reads them."""
    labels = list(scores.labels.values())
    order = labels[0].order if labels else None
    out: dict[str, Any] = {
        "meta": {
            "labels": [[lab.key, lab.rule.model_dump(mode="json")] for lab in labels],
            "streams": sorted(scores.streams, key=scores.streams.__getitem__),
            "seconds": scores.seconds,
        }
    }
    if order is not None:
        out["frame_start"] = (
            np.zeros(0, np.int64) if order.frame_start is None else order.frame_start
        )
        out["ts"], out["stream"], out["starts"] = order.ts, order.stream, order.layout.starts
    for n, lab in enumerate(labels):
        out[f"score{n}"], out[f"margin{n}"] = lab.score, lab.margin_ok
    return out


def _traffic_from(f: Any, kernel: Any) -> tuple[tuple[Any, ...], TrafficScores]:
    with np.load(f, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        streams = {str(name): n for n, name in enumerate(meta["streams"])}
        labels: dict[str, LabelTraffic] = {}
        if meta["labels"]:
            ts, stream = data["ts"], data["stream"]
            if len(stream) and stream.max() >= len(streams):
                raise ValueError("a stream code without a stream")
            starts, frame_start = data["starts"], data["frame_start"]
            order = order_of(ts, stream, starts, frame_start if len(frame_start) else None, kernel)
            for n, (key, rule) in enumerate(meta["labels"]):
                score, margin = data[f"score{n}"], data[f"margin{n}"]
                fs = order.frame_start
                fits = len(score) == len(ts) if fs is None else not len(fs) or fs[-1] < len(score)
                if score.dtype != np.float32 or margin.dtype != np.bool_ or not fits:
                    raise ValueError(f"label {key}: arrays of the wrong type or length")
                if len(margin) != len(score):
                    raise ValueError(f"label {key}: arrays of the wrong length")
                labels[str(key)] = LabelTraffic(
                    str(key),
                    Temporal.model_validate(rule),
                    score,
                    margin,
                    order,
                    kernel.find_incidents,
                )
        frames = len(next(iter(labels.values())).frame_score) if labels else 0
        made = TrafficScores(labels, frames, float(meta["seconds"]), streams)
    return tuple(meta["made_with"]), made


def _result_from(f: Any) -> Any:
    result = _ResultUnpickler(f).load()
    if type(result).__name__ != "BacktestResult":
        raise ValueError("not a backtest result")
    return result


def _examples_from(f: Any) -> list[LabeledScore]:
    data = json.loads(f.read().decode())
    return [
        LabeledScore(str(p), str(lab), bool(pos), float(score), bool(ok))
        for p, lab, pos, score, ok in data
    ]
