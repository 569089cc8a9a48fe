"""`sam2-api`: segment images with a running server, one at a time or in batches.

    sam2-api segment photo.jpg --point 320,200 --point 40,40,0 --overlay overlay.png
    sam2-api segment s3://my-photos/cat.png --box 10,20,200,220 --url http://gpu-box:3000
    sam2-api segment photo.jpg --point 320,200 --candidates --format rle --format polygons
    sam2-api segment photo.jpg --point 320,200 --point 400,210 --previous-mask-id m_… [--mask-input start.png]
    sam2-api everything photo.jpg --overlay objects.png [--points-per-side 32] [--param crop_n_layers=1]
    sam2-api batch requests.jsonl --output results.jsonl --concurrency 4 [--resume]
    sam2-api track clip.mp4 --object 0:120,80 --object 0:box=10,10,90,90 --output-dir tracked/

--url, --api-key and --timeout go before or after the command; --url and --api-key default to
$SAM2_API_URL and $SAM2_API_KEY (a flag wins over the environment).

A batch file has one JSON request per line: {"image": "<path | s3://… | https://…>", "points":
[[x, y]], "labels": [1], "box": [x1, y1, x2, y2], "multimask_output": true, "id": "anything"}.
Each line gets one result line (errors included, the batch goes on); --resume skips the lines
that already have a result and retries only those that failed for want of a server. Ctrl+C stops
a batch: nothing new is sent, requests in flight get a few seconds to finish, every result that
arrived is written, and the command that resumes it is printed (exit status 130).

Results go to stdout as JSON, everything else to stderr. What stops a command (no server at --url,
a file that cannot be read, a refused API key) is one line, `error: …`, and exit status 1; a
request the server refuses prints its JSON answer and exits 1 too. When stdout is closed early
(`sam2-api … | head`), the command stops quietly with status 141, as a Unix tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from .batch import DEFAULT_CONCURRENCY, command_batch
from .client import (
    DEFAULT_TIMEOUT, DEFAULT_URL, REFERENCE_SCHEMES, Client, CommandError, check_api_key, overlay_source,
    printed_body, read_image,
)
from .overlay import draw_objects, overlay

CLOSED_PIPE_STATUS = 128 + signal.SIGPIPE  # what a shell reports for a tool that SIGPIPE ended


def parse_point(text: str) -> tuple[list[float], int]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--point wants X,Y or X,Y,LABEL; got {text!r}")
    label = int(parts[2]) if len(parts) == 3 else 1
    return [float(parts[0]), float(parts[1])], label


def parse_box(text: str) -> list[float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box wants X1,Y1,X2,Y2; got {text!r}")
    return [float(p) for p in parts]


def command_segment(args: argparse.Namespace) -> int:
    points = [p for p, _ in args.point] or None
    labels = [label for _, label in args.point] or None
    # The overlay is drawn from the mask's RLE: it comes back with or without S3 on the server.
    formats = set(args.format) | ({"rle"} if args.overlay else set())
    fields = {"points": points, "labels": labels, "box": args.box, "multimask_output": args.multimask,
              "candidates": args.candidates or None, "previous_mask_id": args.previous_mask_id,
              "formats": sorted(formats) or None, "polygon_tolerance": args.polygon_tolerance, "model": args.model}
    client = Client(args.url, args.api_key, args.timeout)
    response = client.segment(args.image, fields, args.mask_input)
    body = printed_body(response, client, leave_out=formats - set(args.format))
    if response.status_code != 200:
        return 1
    if args.overlay:
        drawn = overlay(read_image(args.image, args.timeout), body["rle"], points or (), labels or (), args.box)
        drawn.save(args.overlay)
        print(f"overlay written to {args.overlay}", file=sys.stderr)
    return 0


def parse_param(text: str) -> tuple[str, object]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"--param wants NAME=VALUE, e.g. crop_n_layers=1; got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value  # sent as a string; the server says what it wants instead


def command_everything(args: argparse.Namespace) -> int:
    fields = dict(args.param)
    fields.update({name: value for name, value in (("points_per_side", args.points_per_side),
                                                   ("max_objects", args.max_objects), ("model", args.model))
                   if value is not None})
    client = Client(args.url, args.api_key, args.timeout)
    response = client.everything(args.image, fields)
    body = printed_body(response, client)
    if response.status_code != 200:
        return 1
    print(f"{len(body['objects'])} objects", file=sys.stderr)
    if args.overlay:
        label_map = overlay_source(body, "label_map_url", args.timeout)
        if label_map is None:
            return 1
        labels = np.array(Image.open(io.BytesIO(label_map)), dtype=np.uint16)
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(read_image(args.image, args.timeout))))
        draw_objects(image, labels).save(args.overlay)
        print(f"overlay written to {args.overlay}", file=sys.stderr)
    return 0


TRACK_POLL_S = 0.5


def parse_tracked_object(text: str) -> dict:
    """``--object``: one object's prompts, ``FRAME:ITEM[:ITEM...]``, several frames joined by ``+``;
    an ITEM is a click ``X,Y[,LABEL]`` or ``box=X1,Y1,X2,Y2``. ``0:120,80`` clicks the object at
    (120, 80) on frame 0; ``0:box=10,10,90,90:50,50,0+30:100,70`` gives a box and a background click
    on frame 0 and a click on frame 30."""
    prompts = []
    for part in text.split("+"):
        frame, _, items = part.partition(":")
        if not frame.strip().isdigit() or not items:
            raise argparse.ArgumentTypeError(f"--object wants FRAME:X,Y or FRAME:box=X1,Y1,X2,Y2 (several frames "
                                             f"joined by +); got {text!r}")
        prompt: dict = {"frame_index": int(frame)}
        for item in items.split(":"):
            if item.startswith("box="):
                prompt["box"] = parse_box(item.removeprefix("box="))
            else:
                point, label = parse_point(item)
                prompt.setdefault("points", []).append(point)
                prompt.setdefault("labels", []).append(label)
        prompts.append(prompt)
    return prompts[0] if len(prompts) == 1 else {"prompts": prompts}


def command_track(args: argparse.Namespace) -> int:
    """Submit the clip as a `track` task, show its progress, then fetch the result's manifest and
    preview into ``--output-dir``. Ctrl+C cancels the task on the server."""
    client = Client(args.url, args.api_key, args.timeout)
    http = client.http
    fields = {"objects": args.object, "start_frame_index": args.start, "max_frames": args.max_frames,
              "reverse": args.reverse or None, "formats": ["rle"] if args.rle else None, "model": args.model}
    form = {name: json.dumps(value) for name, value in fields.items() if value is not None}
    if args.video.startswith(REFERENCE_SCHEMES):
        form["video_url"] = json.dumps(args.video)
        files = {"none": ("", b"")}  # keeps the request multipart
    else:
        files = {"video": (Path(args.video).name, Path(args.video).read_bytes())}
    submitted = http.post("/track/submit", data=form, files=files)
    check_api_key(submitted, client)
    if submitted.status_code != 200:
        print(json.dumps(_json(submitted), indent=2))
        return 1
    task_id = submitted.json()["task_id"]
    print(f"task {task_id}", file=sys.stderr)
    try:
        state = _follow(http, task_id, args.quiet)
    except KeyboardInterrupt:
        http.put("/track/cancel", params={"task_id": task_id})
        print(f"canceled task {task_id}", file=sys.stderr)
        return 130
    answer = http.get("/track/get", params={"task_id": task_id})
    body = _json(answer)
    print(json.dumps(body, indent=2))
    if state != "completed" or answer.status_code != 200:
        return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, key in (("manifest.json", "manifest_url"), ("preview.mp4", "preview_url")):
        if body.get(key):
            download = httpx.get(body[key], timeout=args.timeout)
            download.raise_for_status()
            (args.output_dir / name).write_bytes(download.content)
            print(f"{name} written to {args.output_dir / name}", file=sys.stderr)
    return 0


def _follow(http: httpx.Client, task_id: str, quiet: bool) -> str:
    """Poll the task's status until it ends, with a progress bar of frames tracked; its last status."""
    with tqdm(total=None, unit="frame", disable=quiet, desc="queued") as bar:
        while True:
            status = http.get("/track/status", params={"task_id": task_id}).json()
            progress = status.get("progress") or {}
            if progress.get("frames_total") and bar.total != progress["frames_total"]:
                bar.total = progress["frames_total"]
                bar.refresh()
            bar.set_description(progress.get("phase") or status["status"], refresh=False)
            bar.update((progress.get("frames_done") or 0) - bar.n)
            if status["status"] in ("completed", "failed", "canceled"):
                return status["status"]
            time.sleep(TRACK_POLL_S)


def _json(response: httpx.Response) -> dict:
    try:
        return response.json()
    except ValueError:
        return {"error": response.text, "status": response.status_code}


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """The command line, with the server options taken before or after the command (the later one
    wins), then from ``environ``, then their defaults."""
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"the server (default: $SAM2_API_URL, else {DEFAULT_URL})")
    server.add_argument("--api-key", default=argparse.SUPPRESS,
                        help="sent as Authorization: Bearer <key> (default: $SAM2_API_KEY)")
    server.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help=f"seconds per request (default: {DEFAULT_TIMEOUT:g})")
    parser = argparse.ArgumentParser(prog="sam2-api", description=__doc__.splitlines()[0], parents=[server])
    commands = parser.add_subparsers(dest="command", required=True)
    size = argparse.ArgumentParser(add_help=False)
    size.add_argument("--model", metavar="SIZE", help="the SAM 2.1 size, among those the server serves "
                      "(hiera_tiny, small, facebook/sam2.1-hiera-large, …; default: the server's)")

    one = commands.add_parser("segment", parents=[server, size], help="segment one image and print the JSON result")
    one.add_argument("image", help="a local file, s3://bucket/key or https://… URL")
    one.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]",
                     help="a click in pixels of the upright image; LABEL 1 = object (default), 0 = background")
    one.add_argument("--box", type=parse_box, metavar="X1,Y1,X2,Y2")
    one.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None)
    one.add_argument("--candidates", action="store_true",
                     help="also list SAM 2's three candidate masks, best first, each with its URL, score and mask_id")
    one.add_argument("--format", action="append", default=[], choices=("rle", "polygons"),
                     help="also return the mask as COCO RLE or as polygons (repeat for both)")
    one.add_argument("--polygon-tolerance", type=float, metavar="PIXELS",
                     help="simplify polygons by up to this many pixels (default 0: the exact pixel boundary)")
    one.add_argument("--previous-mask-id", metavar="MASK_ID",
                     help="refine an earlier answer: its mask_id (send every click so far again)")
    one.add_argument("--mask-input", type=Path, metavar="FILE",
                     help="start from this mask (a PNG of any size: 0 = background, anything else = object)")
    one.add_argument("--overlay", type=Path, help="write the image with the mask and the prompt drawn over it here")
    one.set_defaults(run=command_segment)

    everything = commands.add_parser("everything", parents=[server, size],
                                     help="segment every object of one image and print the JSON result")
    everything.add_argument("image", help="a local file, s3://bucket/key or https://… URL")
    everything.add_argument("--points-per-side", type=int, help="the point grid (server default: 32)")
    everything.add_argument("--max-objects", type=int, help="the most objects returned (server default: 256)")
    everything.add_argument("--param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                            help="any other field of POST /segment_everything, VALUE as JSON, e.g. crop_n_layers=1")
    everything.add_argument("--overlay", type=Path, help="write the image with each object in its own colour here")
    everything.set_defaults(run=command_everything)

    many = commands.add_parser("batch", parents=[server], help="segment every request of a JSONL file")
    many.add_argument("requests", type=Path)
    many.add_argument("--output", type=Path, required=True, help="JSONL results, appended")
    many.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    many.add_argument("--resume", action="store_true", help="skip lines that already have a result")
    many.add_argument("--quiet", action="store_true", help="no progress bar")
    many.set_defaults(run=command_batch)

    clip = commands.add_parser("track", parents=[server, size], help="track objects through a video clip (a task)")
    clip.add_argument("video", help="a local MP4/MOV/WebM file, s3://bucket/key or https://… URL")
    clip.add_argument("--object", type=parse_tracked_object, action="append", default=[],
                      metavar="FRAME:ITEM[:ITEM][+FRAME:ITEM...]",
                      help="one object to track (repeat for more): clicks X,Y[,LABEL] and/or box=X1,Y1,X2,Y2 on a "
                      "frame, several frames joined by +")
    clip.add_argument("--start", type=int, help="first frame to track (default: the first prompted)")
    clip.add_argument("--max-frames", type=int, help="track at most this many frames")
    clip.add_argument("--reverse", action="store_true", help="track backwards from --start")
    clip.add_argument("--rle", action="store_true", help="put each mask's COCO RLE into the manifest too")
    clip.add_argument("--output-dir", type=Path, default=Path("."),
                      help="where manifest.json and preview.mp4 go (default: here)")
    clip.add_argument("--quiet", action="store_true", help="no progress bar")
    clip.set_defaults(run=command_track)

    args = parser.parse_args(argv)
    given = vars(args)
    args.url = given["url"] if "url" in given else environ.get("SAM2_API_URL") or DEFAULT_URL
    args.api_key = given["api_key"] if "api_key" in given else environ.get("SAM2_API_KEY") or None
    args.timeout = given.get("timeout", DEFAULT_TIMEOUT)
    if args.command == "segment" and not args.point and args.box is None:
        parser.error("give at least one --point or a --box")
    if args.command == "batch" and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.command == "track" and not args.object:
        parser.error("give at least one --object")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return run(argv)
        finally:
            sys.stdout.flush()  # here, so that a closed pipe is seen here rather than at exit
    except BrokenPipeError:
        # Nobody reads stdout any more (`| head` has what it wanted). Point it at /dev/null so that
        # Python's own flush at exit has nowhere to fail, and stop as SIGPIPE would stop a Unix tool.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return CLOSED_PIPE_STATUS


def run(argv: Sequence[str] | None) -> int:
    """The command's exit status; what stopped it, if anything, in one line on stderr."""
    args = parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:  # outside a batch's own handling: nothing half-done to report
        print("interrupted", file=sys.stderr)
        return 130
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except httpx.HTTPError as exc:
        print(f"error: {http_failure(exc, args)}", file=sys.stderr)
    except BrokenPipeError:
        raise
    except OSError as exc:  # a file that cannot be read or written
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}", file=sys.stderr)
    return 1


def http_failure(exc: httpx.HTTPError, args: argparse.Namespace) -> str:
    """An HTTP failure that ended a command, in words: the server's address and how to change it
    when it was the server that could not be reached, else the address that failed."""
    url = str(exc.request.url)
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{exc.request.method} {url}: {exc.response.status_code} {exc.response.reason_phrase}"
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {url} within {args.timeout:g} s (--timeout)"
    if isinstance(exc, httpx.ConnectError) and url.startswith(args.url.rstrip("/") + "/"):
        return (f"no server answers at {args.url} ({exc}); start one (scripts/serve.sh) or give its "
                f"address with --url or SAM2_API_URL")
    return f"{exc.request.method} {url}: {type(exc).__name__}: {exc}"

if __name__ == "__main__":
    sys.exit(main())
