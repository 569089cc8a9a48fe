"""Make the README's pictures from a real run: the /ui page, and `sam2-api segment --overlay`.

Starts a local S3 server (moto) with the public-read mask bucket and `bentoml serve service.py`
with the random-init test checkpoint, then:

- docs/images/ui.png: opens /ui in headless Chromium, loads tests/data/chelsea.png, clicks the cat
  (object) and a corner (background), waits until the mask is drawn, and takes a screenshot;
- docs/images/overlay.png: runs `sam2-api segment tests/data/astronaut.png` with an object click, a
  background click and a box, with --overlay.

Both are saved as optimised 256-colour PNGs (well under 150 KB each), the overlay downscaled.
The weights are random: the masks are meaningless blobs. The pictures show how the page and the
command draw masks and prompts, not what SAM 2 finds.

    .venv/bin/python scripts/make_readme_pictures.py                      # overwrites both pictures
    .venv/bin/python scripts/make_readme_pictures.py --out /tmp/pictures  # somewhere else

Needs Chromium (Debian: apt-get install chromium) and the dev extra (playwright, moto). Writes the
test checkpoint first when it is missing (scripts/make_test_checkpoint.py). Safe to re-run.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
from PIL import Image

from sam2_api.cli.overlay import BACKGROUND_COLOUR, BOX_COLOUR, MASK_COLOUR, OBJECT_COLOUR, RING_COLOUR
import _shared  # noqa: F401  (puts the repository's root on sys.path, for tests.support)
from tests.support.localdev import bento_server, clean_env, moto_server, prepare_mask_bucket

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt"
BUCKET, PREFIX = "readme-masks", "sam2-api-masks/"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "readme-key", "AWS_SECRET_ACCESS_KEY": "readme-secret"}
# Headless as root, and quiet: no network is needed beyond loopback.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]

UI_IMAGE, UI_CLICKS = "chelsea.png", [((250, 120), "left"), ((40, 270), "right")]  # 451x300
UI_WINDOW = {"width": 860, "height": 420}  # room for the image at its own size
OVERLAY_IMAGE, OVERLAY_WIDTH = "astronaut.png", 384  # 512x512
OVERLAY_PROMPT = ["--point", "250,160", "--point", "460,60,0", "--box", "150,60,360,300"]


def save_small(image: Image.Image, path: Path, width: int | None = None) -> int:
    """``image`` as an optimised 256-colour PNG, downscaled to ``width`` when given; returns its size
    in bytes. The markers' colours are few pixels, which a plain median cut would merge away: they
    are added to the palette as they are."""
    image = image.convert("RGB")
    if width and image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
    kept = [OBJECT_COLOUR, BACKGROUND_COLOUR, RING_COLOUR, BOX_COLOUR, tuple(int(c) for c in MASK_COLOUR)]
    common = image.quantize(colors=256 - len(kept), method=Image.Quantize.MEDIANCUT).getpalette()
    palette = Image.new("P", (1, 1))
    palette.putpalette(common[:3 * (256 - len(kept))] + [c for colour in kept for c in colour])
    image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
    return path.stat().st_size


def screenshot_ui(url: str, image: Path, chromium: str) -> Image.Image:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=UI_WINDOW)
            page.goto(f"{url}/ui/?decode=server")  # each click a /segment answer, with its mask link
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#stage:not([hidden])")
            box = page.locator("#canvas").bounding_box()
            scale = box["width"] / page.evaluate("document.getElementById('canvas').width")  # screen px per image px
            for (x, y), button in UI_CLICKS:
                with page.expect_response(lambda r: r.url.endswith("/segment")) as answer:
                    page.mouse.click(box["x"] + (x + 0.5) * scale, box["y"] + (y + 0.5) * scale, button=button)
                mask_url = answer.value.json()["mask_url"]
                page.wait_for_function("url => document.getElementById('mask-link').href === url", arg=mask_url,
                                       timeout=120_000)
            return Image.open(io.BytesIO(page.screenshot()))
        finally:
            browser.close()


def run_overlay(url: str, image: Path, out: Path) -> None:
    command = [sys.executable, "-m", "sam2_api.cli", "segment", str(image), *OVERLAY_PROMPT, "--overlay", str(out),
               "--url", url]
    done = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"sam2-api failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder (default: %(default)s)")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="default: the random test weights")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if not args.checkpoint.exists() and args.checkpoint == CHECKPOINT:
        subprocess.run([sys.executable, "scripts/make_test_checkpoint.py", "--output", str(CHECKPOINT)], cwd=REPO,
                       check=True)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        s3_server = moto_server(logs)
        s3_server.start("/moto-api/")
        server = None
        try:
            s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1",
                              **{name.lower(): value for name, value in CREDENTIALS.items()})
            prepare_mask_bucket(s3, BUCKET, PREFIX)
            server = bento_server("readme", logs, project=REPO, env={
                "SAM2_CHECKPOINT": str(args.checkpoint), "S3_BUCKET_NAME_STAGING": BUCKET,
                "S3_ENDPOINT_URL": s3_server.url, "AWS_REGION": "us-east-1", **CREDENTIALS,
            })
            print("starting bentoml serve service.py …", file=sys.stderr)
            server.start("/readyz")

            size = save_small(screenshot_ui(server.url, REPO / "tests" / "data" / UI_IMAGE, args.chromium),
                              args.out / "ui.png")
            print(f"{args.out / 'ui.png'}: {size / 1000:.0f} KB", file=sys.stderr)
            drawn = logs / "overlay.png"
            run_overlay(server.url, REPO / "tests" / "data" / OVERLAY_IMAGE, drawn)
            size = save_small(Image.open(drawn), args.out / "overlay.png", width=OVERLAY_WIDTH)
            print(f"{args.out / 'overlay.png'}: {size / 1000:.0f} KB", file=sys.stderr)
        finally:
            if server:
                server.stop()
            s3_server.stop()


if __name__ == "__main__":
    main()
