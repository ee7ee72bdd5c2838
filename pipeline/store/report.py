"""HTML pages of the store: the backtest report and the search gallery.

Both are one self-contained page in the scan report's style
(:data:`pipeline.scan.report.REPORT_STYLE`): no script, styles inline, every picture a
``data:`` URI and a Content-Security-Policy that loads nothing else.

The backtest report (:func:`render_backtest`): what was compared (model, weights, the edited
set and the baseline sets, range, frames), a table per label (incidents before and after,
added, removed, changed, passing frames), and per label a score histogram (edited set over
baseline, with the cutoff), a timeline per stream whose incidents changed (baseline spans
above, edited below) and the peak thumbnails of the added and removed incidents.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from pipeline.scan.report import REPORT_STYLE, SEVERITY_RANK
from pipeline.store.backtest import BacktestResult, Incident, LabelDiff
from pipeline.store.groundtruth import ReviewSummary
from pipeline.store.search import SearchHit

__all__ = ["MAX_SHOWN", "render_backtest", "render_gallery"]

#: At most this many added (and removed) incidents are shown per label; the JSON has all.
MAX_SHOWN: Final = 60
_MAX_TIMELINES: Final = 20
_COLOURS: Final = {"low": "#e0b000", "medium": "#f07800", "high": "#d62020", "critical": "#8a0040"}
_EXTRA_STYLE: Final = """
.added { color: #0a7a2f; } .removed { color: #a01818; }
svg.hist, svg.spans { display: block; width: 100%; height: auto; margin: 6px 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
"""
_Place = tuple[str, int, int, int]
Thumbnails = Callable[[Sequence[_Place]], Mapping[_Place, bytes]]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: Sequence[str]) -> str:
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{REPORT_STYLE}{_EXTRA_STYLE}</style></head><body>",
    ]
    return "\n".join([*head, *body, "</body></html>"]) + "\n"


def _picture(data: bytes | None, alt: str) -> str:
    if data is None:
        return '<div class="thumb missing">no picture</div>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img class="thumb" alt="{_e(alt)}" src="data:image/jpeg;base64,{encoded}">'


def _place(i: Incident) -> _Place:
    return (i.stream_id, i.peak_seq, i.peak_frame_index, i.peak_tile)


# --------------------------------------------------------------------------------------------
# backtest


def render_backtest(result: BacktestResult, *, thumbnails: Thumbnails | None = None) -> str:
    """The backtest report page; ``thumbnails`` gives the stored JPEGs of peak frames."""
    shown = [
        i for d in result.labels.values() for i in [*d.added[:MAX_SHOWN], *d.removed[:MAX_SHOWN]]
    ]
    pictures = thumbnails([_place(i) for i in shown]) if thumbnails and shown else {}
    body = [
        "<h1>clipguard backtest</h1>",
        f'<p class="meta">model <code>{_e(result.model)}</code>, weights '
        f"<code>{_e(result.weights_sha256[:16] or 'none (hash policies)')}</code>; policy set "
        f"<code>{_e(result.policy_set)}</code> against "
        f"{', '.join(f'<code>{_e(b)}</code>' for b in result.baseline) or 'nothing'}</p>",
        f'<p class="meta">{result.frames} frames ({result.rows} stored rows) of '
        f"{len(result.streams)} streams, scored from {_e(_when(result))}; "
        f"{result.other_weights} rows under other weights left out; "
        f"{result.seconds:.2f} s</p>",
        '<p class="demo">Thumbnails show stored frames, including what policies flag.</p>',
        _label_table(result.labels),
        _review_table(result.review),
    ]
    for d in sorted(result.labels.values(), key=lambda d: d.key):
        body.append(_label_section(d, pictures))
    return _page("clipguard backtest", body)


def _when(result: BacktestResult) -> str:
    since = "the start" if result.since is None else result.since.isoformat()
    until = "now" if result.until is None else result.until.isoformat()
    return f"{since} to {until}"


def _label_table(labels: Mapping[str, LabelDiff]) -> str:
    rows = [
        "<table><tr><th>label</th><th>mode</th><th>rule</th><th>incidents</th>"
        "<th>before</th><th>added</th><th>removed</th><th>changed</th><th>unchanged</th>"
        "<th>passing frames</th><th>before</th></tr>"
    ]
    for d in sorted(labels.values(), key=lambda d: d.key):
        cutoff = "" if d.cutoff is None else f"{d.kind} &ge; {d.cutoff:g}"
        rows.append(
            f'<tr><td><a href="#{_e(_anchor(d.key))}">{_e(d.key)}</a></td>'
            f"<td>{_e(d.mode or 'removed')}</td><td>{cutoff}</td>"
            f'<td class="num">{d.incidents}</td><td class="num">{d.baseline_incidents}</td>'
            f'<td class="num added">+{len(d.added)}</td>'
            f'<td class="num removed">&minus;{len(d.removed)}</td>'
            f'<td class="num">{len(d.changed)}</td><td class="num">{d.unchanged}</td>'
            f'<td class="num">{d.frames_passing}</td>'
            f'<td class="num">{d.baseline_frames_passing}</td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def _review_table(review: ReviewSummary | None) -> str:
    """Precision and recall against the review labels."""
    if review is None:
        return ""
    head = (
        f'<h2 id="review">Review labels</h2><p class="meta">From '
        f"<code>{_e(review.source)}</code>. Scored at {_e(review.rule)}</p>"
    )
    if not review.labels:
        return head + '<p class="meta">No reviewed incident of these labels.</p>'
    rows = [
        '<table class="review"><tr><th>label</th><th>reviewed</th><th>correct</th>'
        "<th>incorrect</th><th>unsure</th><th>not in these frames</th>"
        "<th>precision</th><th>recall</th><th>TP / FP / FN</th>"
        "<th>precision before</th><th>recall before</th><th>TP / FP / FN before</th></tr>"
    ]
    for key, r in sorted(review.labels.items()):
        cells = [
            f"<td>{_e(key)}</td>",
            *(
                f'<td class="num">{n}</td>'
                for n in (
                    r.labelled,
                    r.verdicts.get("correct", 0),
                    r.verdicts.get("incorrect", 0),
                    r.verdicts.get("unsure", 0),
                    r.outside,
                )
            ),
        ]
        for s in (r.edited, r.deployed):
            cells.append(f'<td class="num">{_ratio(s.precision)}</td>')
            cells.append(f'<td class="num">{_ratio(s.recall)}</td>')
            cells.append(f'<td class="num">{s.tp} / {s.fp} / {s.fn}</td>')
        rows.append(f'<tr id="review-{_e(_anchor(key))}">{"".join(cells)}</tr>')
    rows.append("</table>")
    if review.unplaced:
        rows.append(
            f'<p class="meta">{review.unplaced} labels name no span (made by an older studio '
            "for incidents no longer queued) and are left out.</p>"
        )
    return head + "".join(rows)


def _ratio(x: float | None) -> str:
    return "&mdash;" if x is None else f"{x:.3f}"


def _anchor(key: str) -> str:
    return "label-" + "".join(c if c.isalnum() else "-" for c in key)


def _label_section(d: LabelDiff, pictures: Mapping[_Place, bytes]) -> str:
    parts = [
        f'<section class="video" id="{_e(_anchor(d.key))}"><h3>{_e(d.key)}</h3>',
        _histogram(d),
        _timelines(d),
    ]
    for title, incidents, cls in (
        ("added", d.added, "added"),
        ("removed", d.removed, "removed"),
    ):
        if not incidents:
            continue
        more = len(incidents) - MAX_SHOWN
        note = f" (first {MAX_SHOWN}; {more} more in the JSON)" if more > 0 else ""
        parts.append(f'<p class="{cls}"><strong>{len(incidents)} {title}</strong>{note}</p>')
        parts.append('<div class="peaks">')
        for i in incidents[:MAX_SHOWN]:
            parts.append(_figure(i, pictures.get(_place(i))))
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _figure(i: Incident, data: bytes | None) -> str:
    severity = i.severity if i.severity in SEVERITY_RANK else "low"
    caption = (
        f"<code>{_e(i.stream_id)}</code><br>{i.start_ts:.2f}&ndash;{i.end_ts:.2f} s, peak "
        f'{i.peak_score:.3f} at {i.peak_ts:.2f} s <span class="badge" '
        f'style="background:{_COLOURS[severity]}">{_e(severity)}</span>'
    )
    if i.match is not None:  # a hash policy's: the bank entry matched at the peak
        m = i.match
        distance = "" if m.get("distance") is None else f", distance {_e(m['distance'])}"
        caption += (
            f"<br>bank <code>{_e(m.get('bank'))}</code> entry <code>{_e(m.get('entry_id'))}"
            f"</code> ({_e(m.get('signal_type'))}{distance})"
        )
    picture = _picture(data, f"peak frame of {i.key} at {i.peak_ts:.2f} s")
    return f'<figure class="peak">{picture}<figcaption>{caption}</figcaption></figure>'


def _histogram(d: LabelDiff) -> str:
    if not d.bins or not (d.histogram or d.baseline_histogram):
        return '<p class="meta">No scores.</p>'
    w, h, left = 960, 120, 40
    top = max([1, *d.histogram, *d.baseline_histogram])
    step = (w - left - 10) / len(d.histogram)
    lo, hi = d.bins[0], d.bins[-1]
    out = [
        f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h + 20}" '
        f'role="img" aria-label="score histogram of {_e(d.key)}">'
    ]
    for k, (new, old) in enumerate(zip(d.histogram, d.baseline_histogram, strict=True)):
        x = left + k * step
        for value, colour, dx in ((old, "#9aa3b2", 0.0), (new, "#2f6fd6", step / 2)):
            bar = h * value / top
            out.append(
                f'<rect x="{x + dx:.1f}" y="{h - bar:.1f}" width="{step / 2:.1f}" '
                f'height="{bar:.1f}" fill="{colour}"/>'
            )
    if d.cutoff is not None and hi > lo:
        cx = left + (w - left - 10) * (d.cutoff - lo) / (hi - lo)
        out.append(
            f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="0" y2="{h}" stroke="#d62020" '
            'stroke-dasharray="4 3"/>'
        )
    out.append(
        f'<text x="{left}" y="{h + 15}" font-size="11">{lo:.3f}</text>'
        f'<text x="{w - 10}" y="{h + 15}" font-size="11" text-anchor="end">{hi:.3f}</text>'
        f'<text x="{w - 10}" y="12" font-size="11" text-anchor="end">grey: before, '
        "blue: after, dashed: cutoff</text></svg>"
    )
    return "".join(out)


def _timelines(d: LabelDiff) -> str:
    streams: dict[str, tuple[list[Incident], list[Incident]]] = {}
    for i in d.added:
        streams.setdefault(i.stream_id, ([], []))[1].append(i)
    for i in d.removed:
        streams.setdefault(i.stream_id, ([], []))[0].append(i)
    for new, old in d.changed:
        pair = streams.setdefault(new.stream_id, ([], []))
        pair[1].append(new)
        pair[0].extend(old)
    if not streams:
        return ""
    out = []
    for stream, (before, after) in list(sorted(streams.items()))[:_MAX_TIMELINES]:
        out.append(f'<p class="meta"><code>{_e(stream)}</code></p>')
        out.append(_spans(before, after))
    return "".join(out)


def _spans(before: Sequence[Incident], after: Sequence[Incident]) -> str:
    w, left, lane = 960, 70, 16
    every = [*before, *after]
    t0 = min(i.start_ts for i in every)
    t1 = max(i.end_ts for i in every)
    span = max(t1 - t0, 1e-6)

    def x(t: float) -> float:
        return left + (w - left - 10) * (t - t0) / span

    out = [
        f'<svg class="spans" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {2 * lane + 22}"'
        ' role="img" aria-label="incident spans before and after">',
        f'<text x="0" y="{lane - 4}" font-size="11">before</text>',
        f'<text x="0" y="{2 * lane - 2}" font-size="11">after</text>',
    ]
    for row, incidents, colour in ((0, before, "#9aa3b2"), (1, after, "#2f6fd6")):
        for i in incidents:
            width = max(x(i.end_ts) - x(i.start_ts), 2.0)
            out.append(
                f'<rect x="{x(i.start_ts):.1f}" y="{row * lane + 2}" width="{width:.1f}" '
                f'height="{lane - 4}" fill="{colour}"><title>{i.start_ts:.2f}&ndash;'
                f"{i.end_ts:.2f} s</title></rect>"
            )
    out.append(
        f'<text x="{left}" y="{2 * lane + 16}" font-size="11">{t0:.1f} s</text>'
        f'<text x="{w - 10}" y="{2 * lane + 16}" font-size="11" text-anchor="end">'
        f"{t1:.1f} s</text></svg>"
    )
    return "".join(out)


# --------------------------------------------------------------------------------------------
# search


def render_gallery(
    query: str, hits: Sequence[SearchHit], *, thumbnails: Mapping[str, bytes], model: str
) -> str:
    """The search gallery: each hit's thumbnail (by frame id), score, stream and time."""
    body = [
        "<h1>clipguard store search</h1>",
        f'<p class="meta">{len(hits)} nearest frames to <strong>{_e(query)}</strong> '
        f"(model <code>{_e(model)}</code>, cosine)</p>",
        '<p class="demo">Thumbnails show stored frames, including what policies flag.</p>',
        '<div class="gallery">',
    ]
    for rank, hit in enumerate(hits, 1):
        caption = (
            f"#{rank} cosine {hit.score:.3f}<br><code>{_e(hit.stream_id)}</code><br>"
            f"{hit.ts:.2f} s, scored {_e(hit.scored_at.isoformat(timespec='seconds'))}"
        )
        picture = _picture(thumbnails.get(hit.frame_id), f"frame {rank}")
        body.append(f'<figure class="peak">{picture}<figcaption>{caption}</figcaption></figure>')
    body.append("</div>")
    return _page("clipguard store search", body)
