"""Make the README's picture of segment everything from a real run: `sam2-api everything --overlay`.

Starts a local S3 server (moto) with the public-read mask bucket and `bentoml serve service.py`
with the random-init test checkpoint, runs `sam2-api everything tests/data/astronaut.png --overlay`
and saves docs/images/everything.png (an optimised 256-colour PNG, downscaled), as
scripts/make_readme_pictures.py does for the other two pictures.

The weights are random: their masks are speckles that the generator's default thresholds drop,
so the thresholds are lowered to keep them. The picture shows how each object gets its own colour,
not what SAM 2 finds.

    .venv/bin/python scripts/make_everything_picture.py                      # overwrites the picture
    .venv/bin/python scripts/make_everything_picture.py --out /tmp/pictures  # somewhere else
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_readme_pictures import BUCKET, CHECKPOINT, CREDENTIALS, PREFIX, REPO, save_small  # noqa: E402

from tests.support.localdev import clean_env, served_with_s3  # noqa: E402

IMAGE, WIDTH = "astronaut.png", 384  # 512x512
# The random weights' masks survive only with the thresholds lowered, and all have the same box
# (the whole image), so box NMS is off too; 4x4 points keep the CPU run short.
ARGUMENTS = ["--points-per-side", "4", "--param", "pred_iou_thresh=0", "--param", "stability_score_thresh=0",
             "--param", "box_nms_thresh=1", "--param", "per_object_masks=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="default: the random test weights")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print("starting bentoml serve service.py …", file=sys.stderr)
        with served_with_s3(Path(tmp), "readme-everything", BUCKET, PREFIX, CREDENTIALS,
                            {"SAM2_CHECKPOINT": str(args.checkpoint)}, REPO) as server:
            drawn = Path(tmp) / "everything.png"
            command = [sys.executable, "-m", "sam2_api.cli", "everything", str(REPO / "tests" / "data" / IMAGE),
                       *ARGUMENTS, "--overlay", str(drawn), "--url", server.url]
            done = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"sam2-api failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        size = save_small(Image.open(drawn), args.out / "everything.png", width=WIDTH)
        print(f"{args.out / 'everything.png'}: {size / 1000:.0f} KB ({done.stderr.strip()})", file=sys.stderr)

if __name__ == "__main__":
    main()
