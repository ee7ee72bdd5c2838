"""A longer fuzz run of the decode stage than the test suite's: mutated real inputs, in the pool.

Real segments and images (generated with PyAV's encoders by ``tests/media.py``) are mutated at
random (bit flips, overwritten runs, truncation, duplicated and deleted runs, the same mutations
as ``tests/test_decode_safety.py``) and decoded in a :class:`DecodePool`. Every outcome must be
a :class:`DecodeResult` or a typed :class:`DecodeError`; the counts of each are printed. Inputs
that crashed a decode process (:class:`DecodeCrash`) or ran past the time limit
(:class:`DecodeTimeout`) are findings: they are written to ``--findings`` for a bug report.
Several inputs are in flight at once, as in the stream worker.

    python bench/fuzz_decode.py [--iterations 3000] [--seed 1] [--processes 2]
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import time
from concurrent.futures import Future
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import media  # noqa: E402

from pipeline.decode import (  # noqa: E402
    DecodeOptions,
    DecodePool,
    DecodeResult,
    Limits,
    Sampling,
)
from pipeline.errors import DecodeCrash, DecodeError, DecodeTimeout  # noqa: E402


def bases() -> dict[str, tuple[bytes, str]]:
    fmp4 = (("movflags", "frag_keyframe+empty_moov+default_base_moof"),)
    return {
        "mpegts-h264": (media.encode(24, bframes=2, gop=8), "video/mp2t"),
        "mp4-h264": (media.encode(24, fmt="mp4", bframes=2), "video/mp4"),
        "fmp4-h264": (media.encode(24, fmt="mp4", muxer_options=fmp4), "video/mp4"),
        "webm-vp9": (media.encode(24, fmt="webm", codec="libvpx-vp9"), "video/webm"),
        "mkv-hevc": (media.encode(24, fmt="matroska", codec="libx265"), "video/x-matroska"),
        "mp4-av1": (media.encode(24, fmt="mp4", codec="libsvtav1"), "video/mp4"),
        "raw-h264": (media.encode(24, fmt="h264", bframes=2), "video/h264"),
        "raw-hevc": (media.encode(24, fmt="hevc", codec="libx265"), "video/h265"),
        "png": (media.still("png", media.marked_image(96, 64)), "image/png"),
        "jpeg": (media.still("jpeg", media.marked_image(96, 64)), "image/jpeg"),
        "webp": (media.still("webp", media.marked_image(96, 64)), "image/webp"),
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        at = rng.randrange(len(out))
        kind = rng.randrange(5)
        value = rng.randrange(256)
        if kind == 0:
            out[at] ^= value or 1
        elif kind == 1:
            run = out[at : at + 1 + value % 64]
            out[at : at + len(run)] = bytes([value]) * len(run)
        elif kind == 2:
            del out[max(1, at) :]
        elif kind == 3:
            out[at:at] = out[at : at + 1 + value % 512]
        else:
            del out[at : at + 1 + value % 256]
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--in-flight", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=20.0, help="Limits.timeout per input")
    ap.add_argument("--findings", type=Path, default=ROOT / ".cache" / "fuzz-findings")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    samples = bases()
    names = sorted(samples)
    outcomes: collections.Counter[str] = collections.Counter()
    per_base: dict[str, collections.Counter[str]] = {n: collections.Counter() for n in names}
    findings = 0
    start = time.perf_counter()
    limits = Limits(timeout=args.timeout, max_memory=2 * 1024**3)
    with DecodePool(args.processes, limits=limits, threads=1) as pool:
        pending: collections.deque[tuple[str, bytes, Future[DecodeResult]]] = collections.deque()

        def settle(name: str, data: bytes, future: Future[DecodeResult]) -> None:
            nonlocal findings
            try:
                future.result()
                outcome = "frames"
            except DecodeError as e:
                outcome = type(e).__name__
                if isinstance(e, DecodeCrash | DecodeTimeout):
                    findings += 1
                    args.findings.mkdir(parents=True, exist_ok=True)
                    path = args.findings / f"{outcome}-{name}-{findings}.bin"
                    path.write_bytes(data)
                    print(f"  finding: {path.name}: {e}")
            outcomes[outcome] += 1
            per_base[name][outcome] += 1

        for _ in range(args.iterations):
            name = rng.choice(names)
            data, content_type = samples[name]
            mutated = mutate(data, rng)
            future = pool.submit_bytes(
                mutated, content_type, DecodeOptions(size=32, sampling=Sampling(max_frames=50))
            )
            pending.append((name, mutated, future))
            if len(pending) >= args.in_flight:
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
        good = pool.decode_bytes(samples["mpegts-h264"][0], "video/mp2t", DecodeOptions(size=32))
        assert good.frames_decoded == 24, "the pool stopped decoding good input"
    took = time.perf_counter() - start
    print(f"{args.iterations} mutated inputs in {took:.0f} s ({args.iterations / took:.0f}/s)")
    for outcome, count in outcomes.most_common():
        print(f"  {outcome:18s} {count}")
    print("per input kind:")
    for name in names:
        row = ", ".join(f"{k} {v}" for k, v in per_base[name].most_common())
        print(f"  {name:12s} {row}")
    print(f"findings (crashes, timeouts): {findings}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
