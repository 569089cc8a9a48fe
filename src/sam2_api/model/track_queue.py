"""Clips in line on the model service, and each job's lifetime: one clip tracked at a time per model
replica; the waiting ones take turns across API keys (:class:`Turns`).

Each frame is one job on :class:`sam2_api.model.device_thread.DeviceThread`, so image requests keep
being served between a clip's frames; clips themselves queue, one tracked at a time per model
replica, taking turns across API keys (:class:`Turns`): each key may have at most
``max_waiting_per_tenant`` clips waiting, so one key's flood leaves room for the others.

A job ends when its stream has been read to the end, when :meth:`sam2_api.model.tracker.Tracker.cancel` names it, when it
passes ``SAM2_VIDEO_JOB_TIMEOUT_S``, or when nobody has read its stream for ``STALL_S``
seconds (BentoML 1.4's client does not close the connection of a stream its caller stops reading,
so a vanished reader can only be noticed by silence). Ending it frees its frames and state, and its
stream ends with a record that says why (a :class:`Failure`): a reader never has to guess whether
more is coming.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from typing import Iterator

from .. import errors
from ..messages import Failure
from .video_session import FrameStore, Session

MAX_WAITING_JOBS = 8  # beyond the one tracking: a waiting job's stream holds a model-service thread
MAX_WAITING_PER_TENANT = 4  # half the waiting room: one key's flood leaves the other half to the rest


class JobClosed(Exception):
    """The job was canceled, timed out or abandoned: its stream ends with the reason's record."""

    def failure(self) -> Failure:
        reason = str(self)
        if reason == "canceled":
            return Failure.of(errors.TrackingCanceled("the tracking job was canceled"))
        if reason == "timed out":
            return Failure.of(errors.TrackingTimeout("the tracking job ran past SAM2_VIDEO_JOB_TIMEOUT_S"))
        return Failure.of(errors.ModelUnavailable(f"the tracking job ended ({reason}); retry the task"))


class TrackJob:
    """One stream's job. Everything large lives in ``store`` or ``session``, never in the stream
    generator's own variables across a record, so that :meth:`close`, from any thread, frees it
    even while that generator is suspended."""

    def __init__(self, job_id: str, deadline: float, tenant: str | None = None) -> None:
        self.id = job_id
        self.deadline = deadline
        self.tenant = tenant  # whose turn it takes (Turns)
        self.store: FrameStore | None = None  # while the clip is decoded
        self.session: Session | None = None  # from then on
        self.closed: str | None = None  # why: "canceled", "abandoned", "finished"
        self.busy = False
        self.last_read = time.monotonic()
        self.counted: str | None = None  # its state in the sam2_video_jobs gauge

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.store = self.session = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """One unit of work between two records: refused once closed or past the deadline."""
        if self.closed is not None:
            raise JobClosed(self.closed)
        if time.monotonic() > self.deadline:
            raise errors.TrackingTimeout("the tracking job ran past SAM2_VIDEO_JOB_TIMEOUT_S")
        self.busy = True
        try:
            yield
        finally:
            self.busy = False
            self.last_read = time.monotonic()
        if self.closed is not None:
            raise JobClosed(self.closed)


class Turns:
    """One job tracks at a time; the waiting ones take turns across tenants (API keys). The next to
    track is the oldest waiting job of the tenant served least recently (a tenant with nothing
    tracked or waiting counts as never served), so a tenant with many clips waiting gets every
    other turn at most while anyone else waits, instead of all the turns before them."""

    def __init__(self, max_waiting: int, max_waiting_per_tenant: int) -> None:
        self.max_waiting = max_waiting
        self.max_waiting_per_tenant = max_waiting_per_tenant
        self._current: TrackJob | None = None
        self._waiting: dict[str | None, list[TrackJob]] = {}  # per tenant, oldest first
        self._arrival: dict[TrackJob, int] = {}  # the jobs in line (waiting or tracking): their arrival number
        self._arrivals = itertools.count()
        self._served: dict[str | None, int] = {}  # tenant -> the turn its last job started at
        self._turn = 0
        self._changed = threading.Condition()

    def join(self, job: TrackJob) -> None:
        """Put ``job`` in line; :class:`errors.ModelUnavailable` (nothing joined) when the waiting
        room or its tenant's share of it is full."""
        with self._changed:
            if self._current is not None:
                waiting = sum(len(jobs) for jobs in self._waiting.values())
                if waiting >= self.max_waiting:  # each waiting job holds one of the service's threads
                    raise errors.ModelUnavailable(
                        f"{waiting + 1} clips are already being tracked or waiting here; retry later")
                mine = len(self._waiting.get(job.tenant, ()))
                if mine >= self.max_waiting_per_tenant:
                    raise errors.ModelUnavailable(
                        f"{mine} clips of this API key are already waiting to be tracked here, its share of the "
                        f"queue (SAM2_VIDEO_MAX_WAITING_PER_KEY); submit this one when one of them has finished")
            self._arrival[job] = next(self._arrivals)
            self._waiting.setdefault(job.tenant, []).append(job)
            self._advance()

    def order(self) -> list[TrackJob]:
        """The waiting jobs, in the order they will track (under the lock)."""
        waiting = {tenant: list(jobs) for tenant, jobs in self._waiting.items()}
        served, turn, order = dict(self._served), self._turn, []
        while waiting:
            tenant = min(waiting, key=lambda t: (served.get(t, -1), self._arrival[waiting[t][0]]))
            order.append(waiting[tenant].pop(0))
            turn += 1
            served[tenant] = turn
            if not waiting[tenant]:
                del waiting[tenant]
        return order

    def wait(self, job: TrackJob, timeout: float) -> int:
        """Jobs ahead of ``job`` after waiting up to ``timeout`` s for its turn (0: its turn, or it
        has left the line)."""
        with self._changed:
            self._changed.wait_for(lambda: self._current is job or job.closed is not None, timeout)
            if self._current is job or job not in self._arrival:
                return 0
            return 1 + self.order().index(job)

    def leave(self, job: TrackJob) -> None:
        with self._changed:
            if self._current is job:
                self._current = None
            elif job in self._arrival:
                self._waiting[job.tenant].remove(job)
                if not self._waiting[job.tenant]:
                    del self._waiting[job.tenant]
            else:
                return
            self._arrival.pop(job, None)
            if job.tenant not in self._waiting and (self._current is None or self._current.tenant != job.tenant):
                self._served.pop(job.tenant, None)  # nothing of theirs left: they count as never served
            self._advance()
            self._changed.notify_all()

    def _advance(self) -> None:
        if self._current is None and self._waiting:
            job = self.order()[0]
            self._waiting[job.tenant].remove(job)
            if not self._waiting[job.tenant]:
                del self._waiting[job.tenant]
            self._current = job
            self._turn += 1
            self._served[job.tenant] = self._turn
            self._changed.notify_all()
