"""The precision-recall plot of a calibration, as a PNG drawn with OpenCV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import cv2
import numpy as np

from pipeline.errors import ConfigError
from pipeline.policies.tools.calibrate import CalibrationCurve

__all__ = ["write_pr_plot"]

_W, _H = 760, 560  # canvas
_LEFT, _RIGHT, _TOP, _BOTTOM = 80, 30, 60, 70  # plot area margins
_FONT: Final = cv2.FONT_HERSHEY_SIMPLEX
_BLACK: Final = (0, 0, 0)
_GREY: Final = (225, 225, 225)
_PALETTE: Final = ((200, 90, 30), (40, 40, 200), (40, 150, 40), (160, 40, 160), (0, 140, 220))


def write_pr_plot(curves: Sequence[CalibrationCurve], path: str | Path) -> Path:
    """Draw the precision-recall curves as a PNG at ``path``: recall across, precision up,
    each label's suggested threshold marked with a filled dot, the file's current threshold
    with a ring, the target precision as a dashed line."""
    canvas = np.full((_H, _W, 3), 255, dtype=np.uint8)
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _H - _BOTTOM, _TOP

    def xy(recall: float, precision: float) -> tuple[int, int]:
        return round(x0 + recall * (x1 - x0)), round(y0 - precision * (y0 - y1))

    for k in range(11):  # grid, ticks and tick labels every 0.1
        v = k / 10
        gx, gy = xy(v, v)
        cv2.line(canvas, (gx, y1), (gx, y0), _GREY, 1)
        cv2.line(canvas, (x0, gy), (x1, gy), _GREY, 1)
        cv2.line(canvas, (gx, y0), (gx, y0 + 5), _BLACK, 1)
        cv2.line(canvas, (x0 - 5, gy), (x0, gy), _BLACK, 1)
        if k % 2 == 0:
            cv2.putText(canvas, f"{v:.1f}", (gx - 12, y0 + 22), _FONT, 0.45, _BLACK, 1, cv2.LINE_AA)
            cv2.putText(canvas, f"{v:.1f}", (x0 - 38, gy + 5), _FONT, 0.45, _BLACK, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y1), (x1, y0), _BLACK, 1)
    cv2.putText(
        canvas, "recall", ((x0 + x1) // 2 - 25, _H - 22), _FONT, 0.6, _BLACK, 1, cv2.LINE_AA
    )
    cv2.putText(canvas, "precision", (10, y1 - 12), _FONT, 0.6, _BLACK, 1, cv2.LINE_AA)
    title = "precision-recall: " + (curves[0].policy if curves else "no data")
    cv2.putText(canvas, title, (x0, 30), _FONT, 0.7, _BLACK, 2, cv2.LINE_AA)
    if curves:
        _, ty = xy(0.0, curves[0].target_precision)
        for sx in range(x0, x1, 12):  # dashed target line
            cv2.line(canvas, (sx, ty), (min(sx + 6, x1), ty), (120, 120, 120), 1)
        cv2.putText(
            canvas,
            f"target {curves[0].target_precision:g}",
            (x0 + 6, ty - 6),
            _FONT,
            0.45,
            (120, 120, 120),
            1,
            cv2.LINE_AA,
        )
    for n, curve in enumerate(curves):
        colour = _PALETTE[n % len(_PALETTE)]
        pts = np.array([xy(p.recall, p.precision) for p in curve.points], dtype=np.int32)
        if len(pts) > 1:
            cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        elif len(pts) == 1:
            cv2.circle(canvas, (int(pts[0][0]), int(pts[0][1])), 3, colour, -1, cv2.LINE_AA)
        if curve.current_point is not None:
            c = xy(curve.current_point.recall, curve.current_point.precision)
            cv2.circle(canvas, c, 8, colour, 2, cv2.LINE_AA)
        if curve.suggested is not None:
            s = curve.suggested
            c = xy(s.recall, s.precision)
            cv2.circle(canvas, c, 6, colour, -1, cv2.LINE_AA)
            text = f"{s.threshold:.4g} (P {s.precision:.2f}, R {s.recall:.2f})"
            tx = min(c[0] + 10, x1 - 9 * len(text))
            cv2.putText(canvas, text, (tx, c[1] + 20), _FONT, 0.45, colour, 1, cv2.LINE_AA)
        ly = y0 - 20 - 22 * n  # legend, bottom left
        cv2.line(canvas, (x0 + 12, ly - 4), (x0 + 40, ly - 4), colour, 2, cv2.LINE_AA)
        legend = f"{curve.label} ({curve.rule}; dot: suggested, ring: current)"
        cv2.putText(canvas, legend, (x0 + 48, ly), _FONT, 0.45, colour, 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    if not ok:
        raise ConfigError("cannot encode the PR plot as PNG")
    out = Path(path)
    try:
        out.write_bytes(png.tobytes())
    except OSError as e:
        raise ConfigError(f"cannot write the PR plot to {out}: {e.strerror or e}") from e
    return out
