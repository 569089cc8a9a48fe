"""Progress and cancellation of tracking tasks, across the API service's worker processes.

BentoML 1.4 runs a task in the worker that took its ``/submit`` and keeps its status in a SQLite
file that every worker of the replica reads; it has no progress, and its ``/cancel`` only marks the
task canceled (and answers 400, "not supported in local development server") while the task runs
on. :class:`TaskBoard` is a second SQLite table beside BentoML's: the task writes its phase and
frames done there, any worker reads them. :class:`TaskProgress` wraps BentoML's ``/status`` and
``/cancel`` routes of the task: ``/status`` gains a ``progress`` object (and says ``pending``
while the task waits for the tracker, ``canceled`` once a cancel has stopped it), and ``/cancel``
records the request, which the task sees within half a second and passes on to the model service.

Tasks belong to the API key that submitted them: :class:`TaskProgress` records the caller's tenant
(``RequestGuard``'s ``scope["state"]["tenant"]``, None without API keys) with the task id that
``/submit`` or ``/retry`` answers, before the answer leaves, and ``/status``, ``/get``, ``/retry`` and
``/cancel`` of another key's task answer 404 ``task_id not found``, as for an unknown id, before
BentoML reads its store.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs

from ..server.asgi import captured_response, send_json
from .sqlite_store import SqliteStore

RETENTION_S = 24 * 3600  # as BentoML keeps task results
FINISHED = ("completed", "failed", "canceled")
_SCHEMA = """CREATE TABLE IF NOT EXISTS progress (
    task_id TEXT PRIMARY KEY, phase TEXT NOT NULL, frames_done INTEGER, frames_total INTEGER,
    queue_position INTEGER, cancel INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL)"""
_OWNERS = """CREATE TABLE IF NOT EXISTS owner (task_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, created REAL NOT NULL)"""
NO_KEYS = ""  # the owner of every task when API keys are off


class TaskBoard(SqliteStore):
    """One row per task: its phase (``queued``, ``decoding``, ``tracking``, ``storing``, then
    ``completed``, ``failed`` or ``canceled``), frames done and to do, place in the tracker's
    queue, and whether a cancel was asked for. Safe to use from any thread and process."""

    SCHEMA = (_SCHEMA, _OWNERS)  # reset() at server start, as BentoML starts a fresh result store

    def update(self, task_id: str, phase: str, frames_done: int | None = None, frames_total: int | None = None,
               queue_position: int | None = None) -> None:
        now = time.time()
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT INTO progress (task_id, phase, frames_done, frames_total, queue_position, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(task_id) DO UPDATE SET phase = excluded.phase, "
                "frames_done = COALESCE(excluded.frames_done, frames_done), "
                "frames_total = COALESCE(excluded.frames_total, frames_total), "
                "queue_position = excluded.queue_position, updated = excluded.updated",
                (task_id, phase, frames_done, frames_total, queue_position, now),
            )
            if phase in FINISHED:
                db.execute("DELETE FROM progress WHERE updated < ?", (now - RETENTION_S,))

    def get(self, task_id: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM progress WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else dict(row)

    def request_cancel(self, task_id: str) -> bool:
        """Ask the task to stop; False when it is unknown here or already finished."""
        with closing(self._connect()) as db, db:
            done = db.execute(
                f"UPDATE progress SET cancel = 1 WHERE task_id = ? AND phase NOT IN ({', '.join('?' * len(FINISHED))})",
                (task_id, *FINISHED),
            )
            return done.rowcount == 1

    def set_owner(self, task_id: str, tenant: str | None) -> None:
        """Record that ``task_id`` belongs to ``tenant`` (None: API keys are off)."""
        now = time.time()
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO owner (task_id, tenant, created) VALUES (?, ?, ?)",
                       (task_id, tenant or NO_KEYS, now))
            db.execute("DELETE FROM owner WHERE created < ?", (now - RETENTION_S,))

    def owned_by(self, task_id: str, tenant: str | None) -> bool:
        """Whether ``task_id`` is a task of ``tenant``; False for an unknown id."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT tenant FROM owner WHERE task_id = ?", (task_id,)).fetchone()
        return row is not None and row[0] == (tenant or NO_KEYS)

    def cancel_requested(self, task_id: str) -> bool:
        row = self.get(task_id)
        return bool(row and row["cancel"])


def public_progress(row: dict[str, Any]) -> dict[str, Any]:
    """What ``/status`` shows: ``canceling`` between a cancel request and the task's stop."""
    phase = "canceling" if row["cancel"] and row["phase"] not in FINISHED else row["phase"]
    return {"phase": phase, "frames_done": row["frames_done"], "frames_total": row["frames_total"],
            "queue_position": row["queue_position"]}


class TaskProgress:
    """ASGI middleware over BentoML's task routes ``<route>/submit``, ``/status``, ``/get``,
    ``/retry`` and ``/cancel`` (see the module's docstring); every other path passes through
    untouched. It must run after ``RequestGuard``, which names the caller's tenant."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, route: str, board_path: str) -> None:
        self.app = app
        self.submit_path = f"{route}/submit"
        self.status_path = f"{route}/status"
        self.get_path = f"{route}/get"
        self.retry_path = f"{route}/retry"
        self.cancel_path = f"{route}/cancel"
        self.board = TaskBoard(board_path)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path not in (self.submit_path, self.status_path, self.get_path, self.retry_path, self.cancel_path):
            return await self.app(scope, receive, send)
        tenant = scope.get("state", {}).get("tenant")
        if path != self.submit_path and _has_task_id(scope) and not self.board.owned_by(_task_id(scope), tenant):
            return await send_json(send, 404, {"error": "task_id not found"})
        if path in (self.submit_path, self.retry_path) and scope["method"] == "POST":
            return await self.app(scope, receive, self._owned_by(tenant, send))
        if path == self.status_path and scope["method"] == "GET":
            return await self._status(scope, receive, send)
        if path == self.cancel_path and scope["method"] == "PUT":
            return await self._cancel(scope, receive, send)
        return await self.app(scope, receive, send)

    def _owned_by(self, tenant: str | None, send: Any) -> Callable[[dict[str, Any]], Awaitable[None]]:
        """``send``, recording the new task's owner from BentoML's answer before it goes out (the
        task itself runs after the answer, so nobody can ask about it before it is owned)."""
        start: dict[str, Any] | None = None
        body = bytearray()

        async def recording(message: dict[str, Any]) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                return await send(message)
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            if start["status"] == 200:
                self.board.set_owner(json.loads(body)["task_id"], tenant)
            await send(start)
            await send({"type": "http.response.body", "body": bytes(body)})

        return recording

    async def _status(self, scope, receive, send) -> None:
        status, headers, body = await captured_response(self.app, scope, receive)
        status = status or 500
        row = self.board.get(_task_id(scope))
        if status == 200 and row is not None:
            answer = json.loads(body)
            answer["progress"] = public_progress(row)
            if row["phase"] == "canceled":  # BentoML says failed: the task ended with our 409
                answer["status"] = "canceled"
            elif row["cancel"] and row["phase"] not in FINISHED:
                answer["status"] = "in_progress"  # stopping (BentoML's own cancel already says canceled)
            elif row["phase"] == "queued" and answer.get("status") == "in_progress":
                answer["status"] = "pending"  # waiting for the tracker: not started yet
            body = json.dumps(answer).encode()
        await send_json(send, status, body, headers or ())

    async def _cancel(self, scope, receive, send) -> None:
        task_id = _task_id(scope)
        row = self.board.get(task_id)
        if row is None:
            return await send_json(send, 404, {"error": "task_id not found"})
        if not self.board.request_cancel(task_id):
            message = f"task {task_id} has already {'been canceled' if row['cancel'] else 'finished'} ({row['phase']})"
            return await send_json(send, 409, {"error": message})
        await captured_response(self.app, scope, receive)  # BentoML marks it canceled in its own store too
        await send_json(send, 200, {"task_id": task_id, "status": "canceling"})


def _has_task_id(scope: dict[str, Any]) -> bool:
    """Whether the query names a task_id (without one BentoML answers 400 itself)."""
    return "task_id" in parse_qs(scope.get("query_string", b"").decode("latin-1"))


def _task_id(scope: dict[str, Any]) -> str:
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task_id", [""])
    return values[0]
