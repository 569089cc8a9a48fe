"""``sam2-api batch``: one JSON request per line, sent by a few threads; every result written, Ctrl+C
stopped cleanly, and the command that resumes it."""

from __future__ import annotations

import argparse
import collections
import json
import queue
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from .client import DEFAULT_TIMEOUT, Client, refused_key_advice

DEFAULT_CONCURRENCY = 4
INTERRUPT_GRACE_S = 10.0  # after Ctrl+C, how long requests already sent may take to finish


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
