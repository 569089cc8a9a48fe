"""How long Meta's SAM2AutomaticMaskGenerator's point batches take on this machine, by batch size.

On a CPU a batch of points runs whole between the device thread's checkpoints, so the longest
batch is how long another caller's click may wait beside a segment-everything request; the sum is
the request's decoder time. This measured the CPU default of ``points_per_batch``
(``CPU_POINTS_PER_BATCH`` in src/sam2_api/messages.py). Random-init hiera-tiny weights,
every mask kept (thresholds 0), so the post-processing does the most work it can.

    .venv/bin/python scripts/measure_points_per_batch.py [--checkpoint PATH] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.build_sam import build_sam2

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt")
    parser.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    model = build_sam2(args.config, str(args.checkpoint), device=args.device)

    durations: list[float] = []
    meta_batch = SAM2AutomaticMaskGenerator._process_batch

    def timed(self, *pargs, **kwargs):
        started = time.perf_counter()
        try:
            return meta_batch(self, *pargs, **kwargs)
        finally:
            durations.append(time.perf_counter() - started)

    SAM2AutomaticMaskGenerator._process_batch = timed
    images = (
        ("256x192 flat", np.full((192, 256, 3), 120, np.uint8), 4),
        ("chelsea 451x300", np.array(Image.open(REPO / "tests" / "data" / "chelsea.png").convert("RGB")), 8),
        ("1024x1024 noise", np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), np.uint8), 8),
    )
    for name, image, side in images:
        for batch in (64, 16, 8, 4, 2, 1):
            if batch > side * side:
                continue
            generator = SAM2AutomaticMaskGenerator(model, points_per_side=side, points_per_batch=batch,
                                                   pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                                   output_mode="coco_rle")
            durations.clear()
            generator.generate(image)
            print(f"{name}, {side * side} points in batches of {batch}: batches {sum(durations):.2f} s, "
                  f"longest {max(durations):.2f} s", flush=True)


if __name__ == "__main__":
    main()
