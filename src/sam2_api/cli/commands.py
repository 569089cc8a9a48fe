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
import collections
import io
import json
import os
import queue
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TIMEOUT = 300.0
DEFAULT_CONCURRENCY = 4
INTERRUPT_GRACE_S = 10.0  # after Ctrl+C, how long requests already sent may take to finish
CLOSED_PIPE_STATUS = 128 + signal.SIGPIPE  # what a shell reports for a tool that SIGPIPE ended
REFERENCE_SCHEMES = ("s3://", "https://")

# The overlay's look, the same as the /ui page's (RGB).
MASK_COLOUR = np.array([30, 144, 255], dtype=np.float32)
MASK_ALPHA = 0.5
OBJECT_COLOUR, BACKGROUND_COLOUR = (34, 197, 94), (239, 68, 68)
RING_COLOUR, BOX_COLOUR = (255, 255, 255), (250, 204, 21)


class CommandError(Exception):
    """What stops a command, in one line for the person who typed it."""


class Client:
    """A thin client for POST /segment; one per thread (httpx clients are not shared)."""

    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.has_key = bool(api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def segment(self, image: str, fields: dict, mask_input: Path | None = None) -> httpx.Response:
        """POST /segment: ``image`` a path or a URL, ``fields`` the JSON fields, ``mask_input`` a mask file."""
        return self.post("/segment", image, fields, {"mask_input": mask_input} if mask_input else {})

    def everything(self, image: str, fields: dict) -> httpx.Response:
        return self.post("/segment_everything", image, fields)

    def post(self, route: str, image: str, fields: dict, other_files: dict[str, Path] | None = None) -> httpx.Response:
        form = {name: json.dumps(value) for name, value in fields.items() if value is not None}
        if image.startswith(REFERENCE_SCHEMES):
            form["image_url"] = json.dumps(image)
            files = {"none": ("", b"")}  # keeps the request multipart
        else:
            files = {"image": (Path(image).name, Path(image).read_bytes())}
        for name, path in (other_files or {}).items():
            files[name] = (path.name, path.read_bytes())
        return self.http.post(route, data=form, files=files)


# ---- The overlay --------------------------------------------------------------------------------

def mask_edge(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask's pixels within ``width`` pixels (a square's reach) of a pixel outside it; beyond
    the image counts as inside, so a mask that touches the image's edge has no edge line there."""
    height, image_width = mask.shape
    padded = np.pad(mask, width, constant_values=True)
    across = np.ones((height + 2 * width, image_width), dtype=bool)
    for dx in range(2 * width + 1):
        across &= padded[:, dx:dx + image_width]
    inner = np.ones_like(mask)
    for dy in range(2 * width + 1):
        inner &= across[dy:dy + height]
    return mask & ~inner


def draw_overlay(image: Image.Image, mask: np.ndarray, points: Sequence[Sequence[float]] = (),
                 labels: Sequence[int] = (), box: Sequence[float] | None = None) -> Image.Image:
    """The image with the mask tinted and outlined, and the prompt on top: each point a disc (green
    = object, red = background) in a white ring, the box a yellow frame.

    ``image``: the upright image, W×H; ``mask``: (H, W) bool; ``points`` ([x, y] each), ``labels``
    (1 = object, 0 = background; default 1) and ``box`` ([x1, y1, x2, y2]) in pixels of that image,
    x to the right and y down from its top-left corner, as sent to the server. Marker and line sizes
    grow with the image, so that they stay visible on large photos.
    """
    pixels = np.array(image.convert("RGB"), dtype=np.float32)
    if mask.shape != pixels.shape[:2]:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the image {image.width}x{image.height}")
    radius = max(6, round(max(image.size) / 80))
    line = max(2, round(radius / 3))
    pixels[mask] = (1 - MASK_ALPHA) * pixels[mask] + MASK_ALPHA * MASK_COLOUR
    pixels[mask_edge(mask, line)] = MASK_COLOUR
    drawn = Image.fromarray(np.round(pixels).astype(np.uint8))
    pen = ImageDraw.Draw(drawn)
    if box is not None:
        pen.rectangle([round(c) for c in box], outline=BOX_COLOUR, width=line)
    labels = list(labels) + [1] * (len(points) - len(labels))
    for (x, y), label in zip(points, labels):
        pen.ellipse([x - radius, y - radius, x + radius, y + radius], outline=RING_COLOUR, width=line,
                    fill=OBJECT_COLOUR if label else BACKGROUND_COLOUR)
    return drawn


def overlay(image_bytes: bytes, rle: Mapping, points=(), labels=(), box=None) -> Image.Image:
    """``draw_overlay`` of an encoded image (EXIF orientation applied, as the server does) and the
    mask's COCO RLE as the server returns it (``{"size": [h, w], "counts": str}``)."""
    from ..maskformats import from_coco_rle  # pycocotools: only when an overlay is drawn

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(image_bytes)))
    height, width = rle["size"]
    return draw_overlay(image, from_coco_rle(rle["counts"], height, width), points, labels, box)


def read_image(source: str, timeout: float) -> bytes:
    """The image's bytes, wherever it is (S3 with the caller's own AWS credentials)."""
    if source.startswith("https://"):
        response = httpx.get(source, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
        return response.content
    if source.startswith("s3://"):
        import boto3

        bucket, _, key = source.removeprefix("s3://").partition("/")
        return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(source).read_bytes()


# ---- segment ------------------------------------------------------------------------------------

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


def check_api_key(response: httpx.Response, client: Client) -> None:
    """A 401 as the command line's own words (the server's speak of HTTP headers)."""
    if response.status_code == 401:
        raise CommandError(refused_key_advice(client.has_key))


def refused_key_advice(had_key: bool) -> str:
    if had_key:
        return "the server refused this API key (--api-key, or SAM2_API_KEY in the environment)"
    return "the server wants an API key: pass --api-key KEY, or set SAM2_API_KEY in the environment"


def printed_body(response: httpx.Response, client: Client, leave_out: Iterable[str] = ()) -> dict:
    """The response's JSON (or its text as an error), printed without the fields ``leave_out``;
    all of it is returned. A 401 raises :class:`CommandError` instead."""
    check_api_key(response, client)
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    print(json.dumps({name: value for name, value in body.items() if name not in leave_out}, indent=2))
    return body


def overlay_source(body: dict, field: str, timeout: float) -> bytes | None:
    """The stored PNG that the response's ``field`` names, for an overlay; None (and why, on stderr)
    when the server stored none."""
    if not body.get(field):
        print(f"no overlay: the server returned no {field} (S3 not configured there?)", file=sys.stderr)
        return None
    stored = httpx.get(body[field], timeout=timeout)
    stored.raise_for_status()
    return stored.content


def command_segment(args: argparse.Namespace) -> int:
    points = [p for p, _ in args.point] or None
    labels = [label for _, label in args.point] or None
    # The overlay is drawn from the mask's RLE: it comes back with or without S3 on the server.
    formats = set(args.format) | ({"rle"} if args.overlay else set())
    fields = {"points": points, "labels": labels, "box": args.box, "multimask_output": args.multimask,
              "candidates": args.candidates or None, "previous_mask_id": args.previous_mask_id,
              "formats": sorted(formats) or None, "polygon_tolerance": args.polygon_tolerance}
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


# ---- everything ---------------------------------------------------------------------------------

GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


def object_colour(label: int) -> tuple[int, int, int]:
    """The colour of object ``label`` (1-based): hues a golden-ratio step apart, so that neighbours in
    the list differ; the /ui page (everything.js) uses the same formula."""
    hue = (label * GOLDEN_RATIO_CONJUGATE) % 1.0
    sector, fraction = divmod(hue * 6, 1)
    value, saturation = 0.95, 0.75
    low = value * (1 - saturation)
    falling, rising = value * (1 - saturation * fraction), value * (1 - saturation * (1 - fraction))
    rgb = [(value, rising, low), (falling, value, low), (low, value, rising),
           (low, falling, value), (rising, low, value), (value, low, falling)][int(sector) % 6]
    return tuple(round(255 * c) for c in rgb)


def draw_objects(image: Image.Image, labels: np.ndarray) -> Image.Image:
    """The image with each object of the label map tinted in its own colour (:func:`object_colour`)
    and outlined where it meets another object or the background. ``labels``: ``(H, W)``, 0 = none,
    i = the i-th object, at the image's size (the /segment_everything label map)."""
    pixels = np.array(image.convert("RGB"), dtype=np.int32)
    if labels.shape != pixels.shape[:2]:
        raise ValueError(f"the label map is {labels.shape[1]}x{labels.shape[0]}, the image {image.width}x{image.height}")
    present = np.unique(labels)
    palette = np.zeros((int(present.max()) + 1, 3), dtype=np.int32)
    for label in present[present > 0]:
        palette[label] = object_colour(int(label))
    colours = palette[labels]
    inside = labels > 0
    # Half-way to the colour, rounding halves up: integer arithmetic that the page repeats exactly.
    pixels[inside] = (pixels[inside] + colours[inside] + 1) // 2
    across, down = labels[:, 1:] != labels[:, :-1], labels[1:, :] != labels[:-1, :]
    edge = np.zeros_like(inside)  # the pixels on either side of a change of label
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:, :] |= down
    edge[:-1, :] |= down
    edge &= inside
    pixels[edge] = colours[edge]
    return Image.fromarray(pixels.astype(np.uint8))


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
                                                   ("max_objects", args.max_objects)) if value is not None})
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


# ---- batch --------------------------------------------------------------------------------------

class Interrupts:
    """Counts Ctrl+C (SIGINT) while in use, instead of raising KeyboardInterrupt wherever the main
    thread happens to be (half-way through writing a result line, say). It replaces Python's own
    handler only, in the main thread: a SIGINT that this process was started to ignore stays ignored."""

    def __init__(self) -> None:
        self.count = 0
        self._previous = None

    def __enter__(self) -> Interrupts:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._interrupted)
        return self

    def _interrupted(self, signum, frame) -> None:
        self.count += 1

    def __exit__(self, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Workers:
    """Threads that take request indexes in order and put one result each on ``results``.

    ``stop()`` lets no new request start. The threads are daemons: a request still in flight when
    the command returns is abandoned with the process, it does not hold the exit.
    """

    def __init__(self, indexes: Iterable[int], send: Callable[[Client, int], dict], clients: list[Client]):
        self._todo = collections.deque(indexes)
        self._lock = threading.Lock()
        self._stopped = False
        self.started = 0
        self.results: queue.Queue[dict] = queue.Queue()
        for client in clients:
            threading.Thread(target=self._work, args=(send, client), daemon=True).start()

    def _next(self) -> int | None:
        with self._lock:
            if self._stopped or not self._todo:
                return None
            self.started += 1
            return self._todo.popleft()

    def _work(self, send: Callable[[Client, int], dict], client: Client) -> None:
        while (index := self._next()) is not None:
            self.results.put(send(client, index))

    def stop(self) -> int:
        """Sends nothing more; returns how many requests were started."""
        with self._lock:
            self._stopped = True
            return self.started


def send_request(client: Client, request: dict, line: int) -> dict:
    """One batch line's result: the server's answer, or what went wrong on the way (never raises)."""
    result = {"line": line, "id": request.get("id"), "image": request.get("image")}
    try:
        fields = {k: request.get(k) for k in ("points", "labels", "box", "multimask_output")}
        response = client.segment(str(request["image"]), fields)
        body = response.json()
        result.update(status=response.status_code, ok=response.status_code == 200, **body)
    except Exception as exc:  # a bad line or a lost connection is this line's failure, not the batch's
        result.update(ok=False, status=0, error=f"{type(exc).__name__}: {exc}")
    return result


def finished_lines(output: Path) -> set[int]:
    """Lines of an earlier run with a final answer: a mask or a 4xx. Server and network failures
    (5xx, status 0) and a refused API key (401) are not final: --resume sends them again."""
    done = set()
    if output.exists():
        for line in output.read_text().splitlines():
            result = json.loads(line)
            if result.get("ok") or (400 <= result.get("status", 0) < 500 and result["status"] != 401):
                done.add(result["line"])
    return done


def resume_command(args: argparse.Namespace) -> str:
    words = ["sam2-api", "batch", str(args.requests), "--output", str(args.output), "--resume", "--url", args.url]
    if args.concurrency != DEFAULT_CONCURRENCY:
        words += ["--concurrency", str(args.concurrency)]
    if args.timeout != DEFAULT_TIMEOUT:
        words += ["--timeout", f"{args.timeout:g}"]
    if args.quiet:
        words.append("--quiet")
    return shlex.join(words)


def command_batch(args: argparse.Namespace) -> int:
    requests = [json.loads(line) for line in args.requests.read_text().splitlines() if line.strip()]
    done = finished_lines(args.output) if args.resume else set()
    todo = [i for i in range(len(requests)) if i not in done]
    clients = [Client(args.url, args.api_key, args.timeout) for _ in range(min(args.concurrency, len(todo)))]
    ok = failed = refused = 0
    started = None  # set by the first Ctrl+C: the requests sent by then; no more are sent
    with (Interrupts() as interrupts, args.output.open("a") as out,
          tqdm(total=len(todo), unit="image", disable=args.quiet) as progress):
        workers = Workers(todo, lambda client, i: send_request(client, requests[i], i), clients)
        while ok + failed < len(todo):
            if interrupts.count and started is None:
                started = workers.stop()
                deadline = time.monotonic() + INTERRUPT_GRACE_S
                if started > ok + failed:
                    tqdm.write(f"stopping: waiting up to {INTERRUPT_GRACE_S:g} s for the {started - ok - failed} "
                               "requests in flight (Ctrl+C again to stop at once)", file=sys.stderr)
            if started is not None and (ok + failed == started or interrupts.count > 1 or time.monotonic() > deadline):
                break
            try:
                result = workers.results.get(timeout=0.1)
            except queue.Empty:
                continue
            out.write(json.dumps(result) + "\n")
            out.flush()
            ok += result["ok"]
            failed += not result["ok"]
            refused += result["status"] == 401
            progress.update()
    summary = f"{ok} ok, {failed} failed, {len(done)} already done; results in {args.output}"
    if refused:
        print(f"error: {refused} requests refused: {refused_key_advice(bool(args.api_key))}", file=sys.stderr)
    if ok + failed == len(todo):
        print(summary, file=sys.stderr)
        return 1 if failed else 0
    abandoned = f", {started - ok - failed} abandoned in flight" if started > ok + failed else ""
    print(f"stopped by Ctrl+C: {summary}; {len(todo) - started} not sent{abandoned}", file=sys.stderr)
    print(f"resume with: {resume_command(args)}", file=sys.stderr)
    if args.api_key:
        print("  (with your API key again: --api-key, or SAM2_API_KEY in the environment)", file=sys.stderr)
    return 130


# ---- track --------------------------------------------------------------------------------------

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
              "reverse": args.reverse or None, "formats": ["rle"] if args.rle else None}
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


# ---- the command line ---------------------------------------------------------------------------

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

    one = commands.add_parser("segment", parents=[server], help="segment one image and print the JSON result")
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

    everything = commands.add_parser("everything", parents=[server],
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

    clip = commands.add_parser("track", parents=[server], help="track objects through a video clip (a task)")
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
