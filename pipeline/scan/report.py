"""The scan report: one self-contained HTML page a person can read at a glance.

:func:`render_report` draws it from a scan's ``summary.json`` (as a dict), its score records
and the peak-frame thumbnails; :func:`write_report` does that for a scan's output folder
(``summary.json``, ``scores.jsonl``, ``thumbnails/``) and writes ``report.html`` there.

The page needs no network: no script, styles inline, every picture a ``data:`` URI, and a
Content-Security-Policy that forbids loading anything else. On it, top to bottom:

- the model (a banner when it is the demo model), the policy set and each policy's version,
  severity, action, mode and label rules, and the sampling settings;
- a summary table of every input, most severe first (flagged inputs by their worst severity,
  then failed inputs, then clean ones);
- the failed inputs with their typed error and its message;
- per video: a timeline drawn as inline SVG, one lane per label, with the label's score at
  every scored frame (the best tile's, for tiled frames), its threshold as a dashed line and
  each incident's span shaded in its severity's colour; then a thumbnail of each incident's
  peak frame with its label, span and peak score.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["REPORT_STYLE", "SEVERITY_RANK", "render_report", "write_report"]

#: Severity names from least to most severe, with their sort rank.
SEVERITY_RANK: Final[Mapping[str, int]] = {"low": 1, "medium": 2, "high": 3, "critical": 4}
_SEVERITY_COLOUR: Final[Mapping[str, str]] = {
    "low": "#e0b000",
    "medium": "#f07800",
    "high": "#d62020",
    "critical": "#8a0040",
}
_DASH: Final = "\u2013"  # en dash, for time spans
_MAX_POINTS: Final = 1200  # per lane; longer series keep the highest score of each bin
# timeline geometry, in SVG user units (pixels at 100% zoom)
_WIDTH: Final = 960
_LEFT: Final = 210
_RIGHT: Final = 64
_TOP: Final = 6
_LANE: Final = 44
_GAP: Final = 8
_AXIS: Final = 26
_TICK_STEPS: Final = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)

_STYLE: Final = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1040px; padding: 16px 24px 48px; color: #1d2330; background: #fafbfc; }
h1 { font-size: 24px; margin: 8px 0 2px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #d8dde6; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 4px; word-break: break-all; }
.meta, .facts { color: #5a6373; margin: 2px 0 8px; }
.demo { background: #fff4d6; border: 1px solid #e8c25a; padding: 8px 12px; border-radius: 6px; }
table { border-collapse: collapse; width: 100%; background: #fff; margin: 6px 0; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e6e9ef;
         vertical-align: top; }
th { background: #eef1f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.src { word-break: break-all; }
.badge { display: inline-block; min-width: 56px; text-align: center; padding: 1px 6px;
         border-radius: 10px; color: #fff; font-size: 12px; font-weight: 600; }
.badge.none { background: #9aa3b2; } .badge.failed { background: #4a5160; }
.video { background: #fff; border: 1px solid #dde2ea; border-radius: 8px; padding: 12px 14px;
         margin: 14px 0; }
svg.timeline { display: block; width: 100%; height: auto; margin: 6px 0; }
.peaks { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 6px; }
figure.peak { margin: 0; width: 170px; border: 1px solid #e0e4eb; border-radius: 6px;
              padding: 6px; background: #fcfcfd; }
img.thumb { width: 158px; height: 158px; object-fit: contain; image-rendering: pixelated;
            background: #000; display: block; }
figcaption { font-size: 12px; color: #3a4252; margin-top: 4px; }
.error { color: #a01818; }
code { font-size: 12px; }
"""


#: The reports' style sheet (the store's backtest report and search gallery share it).
REPORT_STYLE: Final = _STYLE


# --------------------------------------------------------------------------- public API


def render_report(
    summary: Mapping[str, Any],
    scores: Iterable[Mapping[str, Any]],
    *,
    thumbnail: Callable[[str], bytes | None] = lambda _: None,
) -> str:
    """The report page for ``summary`` (the dict ``summary.json`` holds), the scan's score
    records (dicts, as in ``scores.jsonl``) and ``thumbnail``, which gives the bytes of a
    flag's ``thumbnail`` path (PNG or JPEG) or None when it is missing."""
    series = _series(scores)
    files: list[Mapping[str, Any]] = list(summary.get("files", []))
    ordered = sorted(enumerate(files), key=lambda item: _order(item[1], item[0]))
    anchors = {i: f"v{n + 1}" for n, (i, _) in enumerate(ordered)}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>clipguard scan report</title>",
        f"<style>{_STYLE}</style></head><body>",
        _header(summary),
        _summary_table(summary, ordered, anchors),
        _failed_section(ordered),
        '<section id="videos"><h2>Videos</h2>',
    ]
    scanned = [(i, f) for i, f in ordered if f.get("status") == "scanned"]
    if not scanned:
        parts.append('<p class="meta">No video was scanned.</p>')
    policy_sets: Mapping[str, Any] = summary.get("policy_sets", {})
    for i, f in scanned:
        rules = _label_rules(policy_sets.get(str(f.get("policy_set")), []))
        parts.append(
            _video_section(f, anchors[i], series.get(str(f["source"]), {}), rules, thumbnail)
        )
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"


def write_report(out_dir: str | Path) -> Path:
    """Write ``report.html`` in a scan's output folder from its ``summary.json``,
    ``scores.jsonl`` and ``thumbnails/``; returns its path."""
    out = Path(out_dir)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))

    def scores() -> Iterable[Mapping[str, Any]]:
        path = out / "scores.jsonl"
        if not path.is_file():
            return
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)

    def thumbnail(relative: str) -> bytes | None:
        path = out / relative
        try:
            if out.resolve() not in path.resolve().parents:
                return None
            return path.read_bytes()
        except OSError:
            return None

    page = render_report(summary, scores(), thumbnail=thumbnail)
    target = out / "report.html"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target


# --------------------------------------------------------------------------- data


_RULES: Final = ("threshold", "probability", "sigmoid")


@dataclass(frozen=True, slots=True)
class _Rule:
    cutoff: float | None  # what the label's score must reach (None: no rule known)
    kind: str  # the rule: threshold (a cosine), probability (softmax), sigmoid
    margin: float | None


def _series(scores: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[float, float]]]:
    """source -> label key -> ts -> best score at that time (over tiles)."""
    out: dict[str, dict[str, dict[float, float]]] = {}
    for record in scores:
        source = str(record.get("source") or record.get("stream_id"))
        ts = float(record["ts"])
        per_label = out.setdefault(source, {})
        for key, score in record.get("scores", {}).items():
            points = per_label.setdefault(key, {})
            value = float(score)
            if ts not in points or value > points[ts]:
                points[ts] = value
    return out


def _label_rules(policies: Sequence[Mapping[str, Any]]) -> dict[str, _Rule]:
    rules: dict[str, _Rule] = {}
    for p in policies:
        for lab in p.get("labels", []):
            kind = next((k for k in _RULES if lab.get(k) is not None), "no")
            rules[f"{p['id']}/{lab['name']}"] = _Rule(
                cutoff=lab.get(kind), kind=kind, margin=lab.get("margin")
            )
    return rules


def _worst(f: Mapping[str, Any]) -> str | None:
    severities = [str(x.get("severity")) for x in f.get("flags", [])]
    return max(severities, key=lambda s: SEVERITY_RANK.get(s, 0), default=None)


def _order(f: Mapping[str, Any], index: int) -> tuple[int, int, int, int]:
    """Flagged first (worst severity, then most incidents), then failed, then clean."""
    worst = _worst(f)
    if worst is not None:
        return (0, -SEVERITY_RANK.get(worst, 0), -len(f.get("flags", [])), index)
    if f.get("status") == "failed":
        return (1, 0, 0, index)
    return (2, 0, 0, index)


# --------------------------------------------------------------------------- sections


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _header(summary: Mapping[str, Any]) -> str:
    model: Mapping[str, Any] = summary.get("model", {})
    settings: Mapping[str, Any] = summary.get("settings", {})
    sampling = settings.get("sampling", {})
    mode = sampling.get("mode", "?")
    how = f"{sampling.get('fps', 1):g} frame(s) per second" if mode == "fps" else mode
    out = [
        "<header><h1>clipguard scan report</h1>",
        f'<p class="meta">generated {_e(summary.get("generated_at", ""))} by clipguard '
        f"{_e(summary.get('clipguard_version', ''))}</p>",
    ]
    if model.get("demo"):
        out.append(
            f'<p class="demo"><strong>Demo model.</strong> {_e(model.get("notice", ""))}</p>'
        )
    weights = str(model.get("weights_sha256", ""))
    out += [
        '<section id="versions"><h2>Model and policies</h2>',
        '<table class="versions"><tbody>',
        f"<tr><th>model</th><td>{_e(model.get('name', ''))} "
        f'<span class="meta">weights sha256 <code>{_e(weights[:16])}</code></span></td></tr>',
        f"<tr><th>policy set</th><td><code>{_e(summary.get('policy_set', ''))}</code></td></tr>",
        f"<tr><th>sampling</th><td>{_e(how)}, fit {_e(settings.get('fit', '?'))}</td></tr>",
        "</tbody></table>",
        '<table class="policies"><thead><tr><th>policy</th><th>version</th><th>severity</th>'
        "<th>action</th><th>mode</th><th>labels</th></tr></thead><tbody>",
    ]
    current = summary.get("policy_sets", {}).get(str(summary.get("policy_set")), [])
    for p in current:
        labels = "; ".join(_rule_text(lab) for lab in p.get("labels", []))
        if p.get("kind") == "hash":
            labels = _hash_rule_text(p)
        calibrated = "" if p.get("calibrated") else ' <span class="meta">(uncalibrated)</span>'
        out.append(
            f'<tr><td>{_e(p["id"])}{calibrated}</td><td class="num">v{_e(p["version"])}</td>'
            f"<td>{_badge(str(p.get('severity')))}</td><td>{_e(p.get('action', ''))}</td>"
            f"<td>{_e(p.get('mode', ''))}</td><td>{_e(labels)}</td></tr>"
        )
    out.append("</tbody></table></section></header>")
    return "\n".join(out)


def _rule_text(lab: Mapping[str, Any]) -> str:
    parts = []
    if lab.get("threshold") is not None:
        parts.append(f"score >= {lab['threshold']:g}")
    if lab.get("probability") is not None:
        parts.append(f"probability >= {lab['probability']:g}")
    if lab.get("sigmoid") is not None:
        parts.append(f"sigmoid >= {lab['sigmoid']:g}")
    if lab.get("margin") is not None:
        parts.append(f"margin >= {lab['margin']:g}")
    return f"{lab['name']}: {' and '.join(parts) or 'no rule'}"


def _hash_rule_text(p: Mapping[str, Any]) -> str:
    banks = ", ".join(str(b) for b in p.get("banks", []))
    signals = ", ".join(str(x) for x in p.get("signals", []))
    return (
        f"hash banks {banks} ({signals}): distance <= {p.get('max_distance')}, "
        f"quality >= {p.get('min_quality')}"
        + (", mirrors and rotations" if p.get("dihedral") else "")
    )


def _badge(severity: str | None, *, failed: bool = False) -> str:
    if failed:
        return '<span class="badge failed">failed</span>'
    if severity is None or severity not in _SEVERITY_COLOUR:
        return '<span class="badge none">none</span>'
    colour = _SEVERITY_COLOUR[severity]
    return (
        f'<span class="badge sev-{_e(severity)}" style="background:{colour}">{_e(severity)}</span>'
    )


def _summary_table(
    summary: Mapping[str, Any],
    ordered: Sequence[tuple[int, Mapping[str, Any]]],
    anchors: Mapping[int, str],
) -> str:
    files = [f for _, f in ordered]
    failed = sum(f.get("status") == "failed" for f in files)
    incidents = sum(len(f.get("flags", [])) for f in files)
    flagged = sum(bool(f.get("flags")) for f in files)
    frames = sum(int(f.get("frames_scored") or 0) for f in files)
    out = [
        '<section id="summary"><h2>Summary</h2>',
        f'<p class="meta">{len(files)} input(s): {len(files) - failed} scanned, {failed} failed; '
        f"{frames} frames scored; {incidents} incident(s) in {flagged} video(s).</p>",
        '<table class="summary"><thead><tr><th>severity</th><th>input</th><th>incidents</th>'
        "<th>labels</th><th>duration</th><th>frames</th><th>status</th></tr></thead><tbody>",
    ]
    for i, f in ordered:
        is_failed = f.get("status") == "failed"
        labels = sorted({f"{x['policy']}/{x['label']}" for x in f.get("flags", [])})
        if is_failed:
            error = f.get("error") or {}
            status = f'<a href="#failed" class="error">{_e(error.get("class", "failed"))}</a>'
            name = _e(f["source"])
        else:
            status = "scanned" + (" (earlier run)" if f.get("skipped") else "")
            name = f'<a href="#{anchors[i]}">{_e(f["source"])}</a>'
        out.append(
            f'<tr class="row"><td>{_badge(_worst(f), failed=is_failed)}</td>'
            f'<td class="src">{name}</td>'
            f'<td class="num">{len(f.get("flags", []))}</td><td>{_e(", ".join(labels))}</td>'
            f'<td class="num">{_duration(f.get("duration"))}</td>'
            f'<td class="num">{_e(f.get("frames_scored") or 0)}</td><td>{status}</td></tr>'
        )
    out.append("</tbody></table></section>")
    return "\n".join(out)


def _failed_section(ordered: Sequence[tuple[int, Mapping[str, Any]]]) -> str:
    failed = [f for _, f in ordered if f.get("status") == "failed"]
    out = ['<section id="failed"><h2>Failed inputs</h2>']
    if not failed:
        out.append('<p class="meta">None: every input was scanned.</p></section>')
        return "\n".join(out)
    out.append(
        '<table class="failed"><thead><tr><th>input</th><th>error</th><th>reason</th></tr>'
        "</thead><tbody>"
    )
    for f in failed:
        error = f.get("error") or {}
        out.append(
            f'<tr><td class="src">{_e(f["source"])}</td>'
            f'<td class="error">{_e(error.get("class", ""))}</td>'
            f"<td>{_e(error.get('message', ''))}</td></tr>"
        )
    out.append("</tbody></table></section>")
    return "\n".join(out)


def _video_section(
    f: Mapping[str, Any],
    anchor: str,
    series: Mapping[str, Mapping[float, float]],
    rules: Mapping[str, _Rule],
    thumbnail: Callable[[str], bytes | None],
) -> str:
    flags: list[Mapping[str, Any]] = list(f.get("flags", []))
    facts = [
        _duration(f.get("duration")),
        f"{f.get('width')}x{f.get('height')}" if f.get("width") else None,
        f.get("codec"),
        f"{f.get('frames_scored', 0)} frames scored",
        f"{len(flags)} incident(s)",
        f"model {f.get('model')}",
        f"policy set {f.get('policy_set')}",
    ]
    out = [
        f'<article class="video" id="{anchor}"><h3>{_e(f["source"])}</h3>',
        f'<p class="facts">{_e(" · ".join(str(x) for x in facts if x))}</p>',
    ]
    if f.get("decode_errors"):
        out.append(
            f'<p class="error">{_e(f["decode_errors"])} damaged packet(s) skipped: '
            f"{_e(f.get('first_decode_error') or '')}</p>"
        )
    out.append(_timeline(f, series, rules))
    out.append(_known_content(f.get("hash_matches") or []))
    if flags:
        out.append('<div class="peaks">')
        for x in flags:
            out.append(_peak_figure(x, thumbnail))
        out.append("</div>")
    out.append("</article>")
    return "\n".join(out)


def _known_content(matches: Sequence[Mapping[str, Any]]) -> str:
    """The bank entries a video matched (hash policies), one row each."""
    if not matches:
        return ""
    out = [
        '<table class="known"><caption>Known content</caption><thead><tr><th>policy</th>'
        "<th>signal</th><th>bank</th><th>entry</th><th>how close</th><th>tags</th>"
        "<th>where</th></tr></thead><tbody>"
    ]
    for m in matches:
        if m.get("query_match_percent") is not None:
            close = (
                f"{float(m['query_match_percent']):.0f}% of frames match, "
                f"{float(m.get('compared_match_percent') or 0):.0f}% of the entry's"
            )
        elif m.get("signal_type") == "md5":
            close = "identical file"
        else:
            close = f"{m.get('distance')} bits"
        where = "whole file"
        if m.get("start_ts") is not None:
            start = float(m["start_ts"])
            end = float(m["end_ts"]) if m.get("end_ts") is not None else start
            where = f"{_clock(start)}{_DASH}{_clock(end)}"
        shadow = ' <span class="meta">(shadow)</span>' if m.get("mode") == "shadow" else ""
        out.append(
            f"<tr><td>{_e(m.get('policy', ''))}{shadow}</td><td>{_e(m.get('signal_type', ''))}"
            f"</td><td>{_e(m.get('bank', ''))}</td><td><code>{_e(m.get('entry_id', ''))}</code>"
            f"</td><td>{_e(close)}</td><td>{_e(', '.join(m.get('tags') or []))}</td>"
            f"<td>{_e(where)}</td></tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _peak_figure(flag: Mapping[str, Any], thumbnail: Callable[[str], bytes | None]) -> str:
    key = f"{flag['policy']}/{flag['label']}"
    span = f"{_clock(flag['start_ts'])}{_DASH}{_clock(flag.get('end_ts') or flag['start_ts'])}"
    caption = (
        f"<strong>{_e(key)}</strong> {_badge(str(flag.get('severity')))}<br>{_e(span)}, "
        f"peak {float(flag['peak_score']):.3f} at {_e(_clock(flag['peak_ts']))}"
    )
    match = flag.get("match")
    if match:
        caption += f"<br>{_e(match.get('bank'))}: <code>{_e(match.get('entry_id'))}</code>"
    relative = flag.get("thumbnail")
    data = thumbnail(str(relative)) if relative else None
    if data is None:
        picture = '<div class="thumb missing">no picture</div>'
    else:
        mime = "image/jpeg" if str(relative).lower().endswith((".jpg", ".jpeg")) else "image/png"
        encoded = base64.b64encode(data).decode("ascii")
        picture = (
            f'<img class="thumb" alt="peak frame of {_e(key)} at {_e(_clock(flag["peak_ts"]))}" '
            f'src="data:{mime};base64,{encoded}">'
        )
    return f'<figure class="peak">{picture}<figcaption>{caption}</figcaption></figure>'


# --------------------------------------------------------------------------- timeline SVG


def _timeline(
    f: Mapping[str, Any],
    series: Mapping[str, Mapping[float, float]],
    rules: Mapping[str, _Rule],
) -> str:
    keys = [k for k in rules if k in series] + sorted(k for k in series if k not in rules)
    if not keys:
        return '<p class="meta">No scores recorded.</p>'
    last = max((max(points) for points in series.values() if points), default=0.0)
    span = max(float(f.get("duration") or 0.0), last)
    span = span if span > 0 else 1.0
    plot_w = _WIDTH - _LEFT - _RIGHT
    height = _TOP + len(keys) * (_LANE + _GAP) + _AXIS

    def x(t: float) -> float:
        return _LEFT + plot_w * min(max(t / span, 0.0), 1.0)

    out = [
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} '
        f'{height}" width="{_WIDTH}" height="{height}" role="img" '
        f'aria-label="scores over time of {len(keys)} label(s)">'
    ]
    flags: list[Mapping[str, Any]] = list(f.get("flags", []))
    for lane, key in enumerate(keys):
        y0 = _TOP + lane * (_LANE + _GAP)
        rule = rules.get(key, _Rule(None, "no", None))
        out.append(_lane(key, y0, rule, sorted(series[key].items()), flags, x))
    out.append(_axis(span, x, _TOP + len(keys) * (_LANE + _GAP)))
    out.append("</svg>")
    return "".join(out)


def _lane(
    key: str,
    y0: float,
    rule: _Rule,
    series: list[tuple[float, float]],
    flags: list[Mapping[str, Any]],
    x: Callable[[float], float],
) -> str:
    """One label's lane: its flagged spans shaded, its threshold, and its score line."""
    plot_w = _WIDTH - _LEFT - _RIGHT
    points = _downsample(series)
    values = [v for _, v in points]
    lo = min([0.0, *values] + ([rule.cutoff] if rule.cutoff is not None else []))
    hi = max([lo + 0.1, *values] + ([rule.cutoff] if rule.cutoff is not None else []))
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad

    def y(v: float) -> float:
        return y0 + _LANE * (1.0 - (v - lo) / (hi - lo))

    policy, _, label = key.partition("/")
    out = [
        f'<g class="lane" data-label="{_e(key)}">'
        f'<rect class="lane-bg" x="{_LEFT}" y="{y0}" width="{plot_w}" height="{_LANE}" '
        'fill="#f3f5f9" stroke="#dfe3ea"/>'
        f'<text x="{_LEFT - 8}" y="{y0 + 18}" text-anchor="end" font-size="13" '
        f'font-weight="600" fill="#1d2330">{_e(label)}</text>'
        f'<text x="{_LEFT - 8}" y="{y0 + 34}" text-anchor="end" font-size="11" '
        f'fill="#5a6373">{_e(policy)}</text>'
    ]
    out += [_span(key, flag, y0, x) for flag in flags if f"{flag['policy']}/{flag['label']}" == key]
    if rule.cutoff is not None:
        ty = y(rule.cutoff)
        out.append(
            f'<line class="threshold-line" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{ty:.1f}" '
            f'y2="{ty:.1f}" stroke="#b01c1c" stroke-width="1.2" stroke-dasharray="5 4">'
            f"<title>{rule.kind} {rule.cutoff:g}</title></line>"
            f'<text x="{_LEFT + plot_w + 4}" y="{ty + 4:.1f}" font-size="11" '
            f'fill="#b01c1c">{rule.cutoff:g}</text>'
        )
    else:
        out.append(
            f'<text x="{_LEFT + plot_w + 4}" y="{y0 + 26}" font-size="10" '
            f'fill="#5a6373">no rule</text>'
        )
    coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    if len(points) == 1:
        t, v = points[0]
        out.append(
            f'<circle class="score-point" cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="#1f5fbf"/>'
        )
    out.append(
        f'<polyline class="score-line" points="{coords}" fill="none" stroke="#1f5fbf" '
        f'stroke-width="1.6" stroke-linejoin="round"><title>{_e(key)} score</title>'
        "</polyline></g>"
    )
    return "".join(out)


def _span(key: str, flag: Mapping[str, Any], y0: float, x: Callable[[float], float]) -> str:
    """An incident's span, shaded in its severity's colour."""
    start = float(flag["start_ts"])
    end_ts = flag.get("end_ts")
    end = start if end_ts is None else float(end_ts)
    left, right = x(start), x(end)
    if right - left < 3:
        left, right = (left + right) / 2 - 1.5, (left + right) / 2 + 1.5
    colour = _SEVERITY_COLOUR.get(str(flag.get("severity")), "#d62020")
    return (
        f'<rect class="flag-span" x="{left:.1f}" y="{y0}" width="{right - left:.1f}" '
        f'height="{_LANE}" fill="{colour}" fill-opacity="0.32">'
        f"<title>{_e(key)} flagged {_clock(start)}{_DASH}{_clock(end)}, peak "
        f"{float(flag['peak_score']):.3f} at {_clock(float(flag['peak_ts']))}"
        "</title></rect>"
    )


def _axis(span: float, x: Callable[[float], float], top: float) -> str:
    step = next((s for s in _TICK_STEPS if span / s <= 10), _TICK_STEPS[-1])
    out = ['<g class="axis" font-size="11" fill="#5a6373">']
    out.append(f'<line x1="{_LEFT}" x2="{x(span):.1f}" y1="{top}" y2="{top}" stroke="#9aa3b2"/>')
    ticks = math.floor(span / step + 1e-9)
    for i in range(ticks + 1):
        t = i * step
        out.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + 4}" stroke="#9aa3b2"/>'
            f'<text x="{x(t):.1f}" y="{top + 16}" text-anchor="middle">{_clock(t, step)}</text>'
        )
    out.append("</g>")
    return "".join(out)


def _downsample(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most ``_MAX_POINTS``, keeping the highest score of each run of points."""
    if len(points) <= _MAX_POINTS:
        return points
    size = math.ceil(len(points) / _MAX_POINTS)
    return [max(points[i : i + size], key=lambda p: p[1]) for i in range(0, len(points), size)]


def _clock(t: float, step: float | None = None) -> str:
    """Seconds as m:ss (h:mm:ss past an hour), with tenths when ``step`` is under a second or,
    without a step, when ``t`` is not a whole second."""
    tenths_total = round(float(t) * 10)
    show_tenths = step < 1 if step is not None else tenths_total % 10 != 0
    whole, tenths = divmod(tenths_total, 10)
    hours, rest = divmod(whole, 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    return f"{text}.{tenths}" if show_tenths else text


def _duration(value: Any) -> str:
    return _DASH if value is None else _clock(round(float(value)))
