"""Which conversion of a mask file into SAM 2's mask_input reproduces the chained result best?

A refining click sends the previous answer's 256×256 logits as ``mask_input`` (previous_mask_id).
A mask *file* has lost those logits: only the thresholded full-size mask is left, and it must be
turned back into logits. This script replays clicked sessions on the test images with Meta's
``SAM2ImagePredictor``: for clicks 2 and 3 it predicts once with the previous logits (the chained
result) and once per conversion of the previous *mask* (what a client would upload), and compares
the two masks: IoU and the share of pixels that differ.

Conversions (each a 256×256 map in the model's input frame, the image stretched to a square):

- area: each cell's covered fraction f, as ``sam2_api.maskinput.coverage`` computes it (what the
  service does), mapped to ``(2f − 1) · A``;
- nearest: the mask resized to 256×256 by nearest neighbour, ±A;
- Meta's video path: what ``SAM2VideoPredictor.add_new_mask`` makes of a mask (resized to 1024×1024
  with antialiasing, thresholded, ±10, downsampled to 256×256 with antialiasing), scaled to ±A;
- Meta's SAM-heads path: the mask downsampled with antialiasing, as 0..1 (``SAM2Base._forward_sam_heads``).

A is swept, and "matched" sets it per step to the mean |logit| of the logits the file stands in for,
which shows how well each conversion can do once A fits the model. The last line prints that
scale for the weights measured: set SAM2_MASK_INPUT_LOGIT near it.

    .venv/bin/python scripts/measure_mask_input.py                      # the random test weights
    .venv/bin/python scripts/measure_mask_input.py --checkpoint sam2.1_hiera_large.pt \\
        --config configs/sam2.1/sam2.1_hiera_l.yaml                      # real weights, if you have them

Prints a Markdown table (docs/REFINEMENT.md holds one). CPU only; about two minutes on two cores.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sam2_api.maskinput import coverage

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt"
# Per image, three clicks as fractions of its width and height, with labels (1 object, 0 background).
SESSIONS = {
    "astronaut.png": [((0.39, 0.29), 1), ((0.51, 0.51), 1), ((0.2, 0.59), 0)],
    "camera.png": [((0.49, 0.39), 1), ((0.59, 0.59), 1), ((0.1, 0.1), 0)],
    "chelsea.png": [((0.5, 0.5), 1), ((0.67, 0.33), 1), ((0.11, 0.17), 0)],
    "coffee.png": [((0.5, 0.5), 1), ((0.33, 0.38), 1), ((0.08, 0.13), 0)],
    "rocket.jpg": [((0.5, 0.47), 1), ((0.52, 0.23), 1), ((0.16, 0.12), 0)],
}
AMPLITUDES = (0.1, 0.3, 1.0, 3.0, 10.0, 32.0)

Conversion = Callable[[np.ndarray, float], np.ndarray]  # (the (H, W) bool mask, A) -> 256×256 float32


def area(mask: np.ndarray, amplitude: float) -> np.ndarray:
    return (2 * coverage(mask).astype(np.float32) / 255 - 1) * amplitude


def nearest(mask: np.ndarray, amplitude: float) -> np.ndarray:
    cells = np.asarray(Image.fromarray(mask).resize((256, 256), Image.Resampling.NEAREST))
    return np.where(cells, amplitude, -amplitude).astype(np.float32)


def _antialiased(values: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(values, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def meta_video(mask: np.ndarray, amplitude: float) -> np.ndarray:
    full = (_antialiased(torch.from_numpy(mask).float()[None, None], 1024) >= 0.5).float()
    return (_antialiased(full * 20 - 10, 256)[0, 0] * (amplitude / 10)).numpy()


def meta_heads(mask: np.ndarray, amplitude: float) -> np.ndarray:
    return _antialiased(torch.from_numpy(mask).float()[None, None], 256)[0, 0].numpy()


def rows() -> list[tuple[str, Conversion | None, float | None]]:
    """(label, conversion, amplitude: None = matched to the previous logits); no conversion = clicks alone."""
    table: list[tuple[str, Conversion | None, float | None]] = [("clicks only, no mask_input", None, 0.0)]
    table += [(f"area, A = {a:g}", area, a) for a in AMPLITUDES] + [("area, A matched", area, None)]
    table += [("nearest, A = 10", nearest, 10.0), ("nearest, A matched", nearest, None)]
    table += [("Meta's video path, A = 10", meta_video, 10.0), ("Meta's video path, A matched", meta_video, None)]
    table += [("Meta's SAM-heads path (0..1)", meta_heads, 1.0)]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--config", default="configs/sam2.1/sam2.1_hiera_t.yaml")
    parser.add_argument("--images", type=Path, default=REPO / "tests" / "data")
    args = parser.parse_args()

    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(build_sam2(args.config, str(args.checkpoint), device="cpu"))
    table = rows()
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in table}
    scales = []
    for name, clicks in SESSIONS.items():
        with Image.open(args.images / name) as file:
            image = np.array(ImageOps.exif_transpose(file).convert("RGB"))
        height, width = image.shape[:2]
        predictor.set_image(image)
        points = np.array([[fx * width, fy * height] for (fx, fy), _ in clicks], dtype=np.float32)
        labels = np.array([label for _, label in clicks])

        def predict(count: int, mask_input: np.ndarray | None, multimask: bool = False):
            masks, scores, logits = predictor.predict(
                point_coords=points[:count], point_labels=labels[:count], multimask_output=multimask,
                mask_input=None if mask_input is None else mask_input[None].astype(np.float32))
            best = int(np.argmax(scores))
            return masks[best] > 0, logits[best]

        mask, logits = predict(1, None, multimask=True)
        for count in (2, 3):
            chained, chained_logits = predict(count, logits)
            scale = float(np.abs(logits).mean())
            scales.append(scale)
            for label, convert, amplitude in table:
                got, _ = predict(count, None if convert is None else convert(mask, scale if amplitude is None else amplitude))
                union = np.count_nonzero(got | chained)
                results[label].append((np.count_nonzero(got & chained) / union if union else 1.0,
                                       np.count_nonzero(got != chained) / got.size))
            mask, logits = chained, chained_logits

    steps = len(next(iter(results.values())))
    print(f"Weights: {args.checkpoint.name}; {len(SESSIONS)} images, clicks 2 and 3 of each: {steps} steps.\n")
    print("| mask_input made from the previous mask | IoU with the chained mask, mean | worst | pixels differing, mean |")
    print("|---|---|---|---|")
    for label, _, _ in table:
        values = np.array(results[label])
        print(f"| {label} | {values[:, 0].mean():.4f} | {values[:, 0].min():.4f} | {100 * values[:, 1].mean():.2f} % |")
    print(f"\nMean |logit| of the previous logits (the scale A should match): {np.mean(scales):.3g} "
          f"(per step {min(scales):.3g} to {max(scales):.3g}).")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
