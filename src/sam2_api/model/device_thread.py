"""The one thread that drives the model's device, and the fair order in which it serves callers.

Every call into the model runs on :class:`DeviceThread`'s single thread: CUDA state that is per
thread (cuBLAS handles and workspaces, autocast, inference mode) is created once, by the warm-up,
instead of by the first request on each of many threads; and the device never runs two requests'
kernels interleaved. Request threads hand in jobs and wait for their results. New images that
queue up together can share one encoder call (``max_batch`` > 1).

Jobs wait in :class:`Lane` s, one per tenant (an API key) and route, served round-robin: first
across tenants, then across a tenant's routes, so that a caller with many jobs queued waits behind
its own jobs, not behind everyone else's. Turns are shared by device time, not by count (deficit
round-robin): a tenant whose jobs took longer than the others' waits out turns until they have had
as much, so that a key sending heavy work (many objects on a large image) cannot take more of the
device than a key sending clicks by sending fewer, longer jobs. A request with many prompts is
several jobs, one per decoder call (:meth:`DeviceThread.decode`). A long job (segment everything) calls
:meth:`DeviceThread.checkpoint` between its steps, where queued short jobs run, in turn by device
time, for up to three times as long as the step took (a click waits for about one step; the long
job keeps at least a quarter of the device: :data:`SHORT_FIRST`); long jobs themselves take turns whole, so that each
finishes within its deadline instead of all of them slowing down together. On the CPU, where one
encoder pass takes seconds, a new image's pass (and a long job's own) stops at a checkpoint after
each block of the encoder's trunk too (:attr:`Segmenter.between_blocks`), where clicks come first
in the same way: a click waits for one block of another key's new image, not for all of it, and
while clicks are queued they have three quarters of the device and a new image's pass the rest (a
new image is seconds anyway; a click on a cached one is the interactive path). On a GPU a pass
takes milliseconds and runs whole.

One thread serves every loaded model size: each job names its :class:`Segmenter` (default: the
thread's own), encodes batch only with encodes of the same model, and typical times are kept per
model and stage.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import numpy as np

from .. import metrics
from ..prompts import Prompt
from .segmenter import Embedding, Mask, Segmenter
from ..timing import StageTimer

TURN_S = 0.05  # device seconds a tenant's turn adds to its credit (deficit round-robin's quantum)
TYPICAL_WEIGHT = 0.2  # of the latest run in a stage's typical time (an exponential moving average)
STRETCH_WEIGHT = 0.2  # of the latest checkpoint in the measured stretch of long jobs (likewise)
# At a long job's checkpoint, or between an encoder pass's blocks on the CPU, queued short jobs run
# for up to this many times its last step: clicks come first (a long job or a new image keeps at
# least a quarter of the device while others click; a long job's deadline estimate counts the
# stretch, so a long job that would not fit is refused before it starts).
SHORT_FIRST = 3.0


class Lane(NamedTuple):
    """Whose job it is: the tenant (:func:`sam2_api.messages.tenant_of`; None when API keys are
    off, and for work that belongs to no key) and the route or kind of work."""

    tenant: str | None
    route: str


@dataclass
class _Job:
    run: Callable[[], Any] | None  # None: an encode job, run in a batch with its neighbours
    lane: Lane
    stage: str = "encoder"  # the name its time is recorded under
    image: np.ndarray | None = None
    timer: StageTimer | None = None
    long: bool = False  # calls checkpoint(), so never runs inside another job's checkpoint
    expected_s: float | None = None  # its caller's estimate of its duration; None: its stage's typical time
    segmenter: Segmenter | None = None  # the model it runs on (DeviceThread._submit: default the thread's own)
    done: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0


class _Lanes:
    """Queued jobs by tenant, then by route; each level served round-robin, tenants by device time
    (:meth:`charge`). Not thread-safe."""

    def __init__(self) -> None:
        self._tenants: OrderedDict[str | None, OrderedDict[str, deque[_Job]]] = OrderedDict()
        # Device seconds each tenant may still use before others' turns (negative: owed). Kept while
        # a tenant has nothing queued: a caller with one request at a time is between requests.
        self._credit: dict[str | None, float] = {}

    def put(self, job: _Job) -> None:
        self._tenants.setdefault(job.lane.tenant, OrderedDict()).setdefault(job.lane.route, deque()).append(job)

    def charge(self, tenant: str | None, seconds: float) -> None:
        """``tenant``'s jobs used the device for ``seconds``."""
        self._credit[tenant] = self._credit.get(tenant, TURN_S) - seconds

    def take(self, short_only: bool = False, encodes: bool = True) -> _Job | None:
        """The next job in turn (not a long one if ``short_only``, not an encode unless ``encodes``), or
        None: of the tenants with such a job, the first in turn with credit left. When none has,
        every one of them gets as many turns' credit as makes one of them positive."""
        waiting = [tenant for tenant, routes in self._tenants.items()
                   if _first_route(routes, short_only, encodes) is not None]
        if not waiting:
            return None
        highest = max(self._credit.get(tenant, TURN_S) for tenant in waiting)
        if highest <= 0:
            turns = int(-highest // TURN_S) + 1
            for tenant in waiting:
                self._credit[tenant] = min(TURN_S, self._credit.get(tenant, TURN_S) + turns * TURN_S)
        tenant = next(tenant for tenant in waiting if self._credit.get(tenant, TURN_S) > 0)
        routes = self._tenants[tenant]
        route = _first_route(routes, short_only, encodes)
        job = routes[route].popleft()
        self._rotate(routes, route)
        self._rotate(self._tenants, tenant)
        return job

    def take_encode(self, segmenter: Segmenter | None) -> _Job | None:
        """The first queued encode job in turn for ``segmenter``'s model, from any lane."""
        for tenant, routes in self._tenants.items():
            for route, jobs in routes.items():
                job = next((job for job in jobs if job.run is None and job.segmenter is segmenter), None)
                if job is not None:
                    jobs.remove(job)
                    if not jobs:
                        self._rotate(routes, route)
                    if not routes:
                        self._rotate(self._tenants, tenant)
                    return job
        return None

    def of_tenant(self, tenant: str | None) -> list[_Job]:
        """``tenant``'s queued jobs, oldest first."""
        return sorted((job for jobs in self._tenants.get(tenant, {}).values() for job in jobs),
                      key=lambda job: job.queued_at)

    def tenants(self) -> Iterator[str | None]:
        return iter(list(self._tenants))

    @staticmethod
    def _rotate(lanes: OrderedDict, key: Any) -> None:
        """``key`` to the end of the turn, or out when it holds nothing more."""
        if lanes[key]:
            lanes.move_to_end(key)
        else:
            del lanes[key]


def _first_route(routes: OrderedDict[str, deque[_Job]], short_only: bool, encodes: bool) -> str | None:
    """The first of a tenant's routes, in turn, whose next job may run (not a long one if
    ``short_only``, not an encode unless ``encodes``)."""
    return next((route for route, jobs in routes.items()
                 if not (short_only and jobs[0].long) and (encodes or jobs[0].run is not None)), None)


class DeviceThread:
    """Runs :class:`Segmenter` calls on one thread; ``max_batch`` > 1 batches queued encodes,
    waiting up to ``max_wait`` seconds after the first for others to arrive."""

    def __init__(self, segmenter: Segmenter, max_batch: int = 1, max_wait: float = 0.0) -> None:
        self.segmenter = segmenter
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._lanes = _Lanes()
        self._ready = threading.Condition()  # guards the lanes, _running and _typical
        self._running: _Job | None = None  # the job the device thread's loop is in (not a checkpoint's)
        self._typical: dict[tuple[str, str], float] = {}  # seconds per job of each (model, stage), recent runs weighted most
        self._stretch = 0.0  # seconds of others' jobs at checkpoints per second of a long job's own work
        self._resumed = 0.0  # when the job on the device thread's loop last started or left a checkpoint
        self._paused = 0.0  # seconds that job has spent in checkpoints
        self._thread = threading.Thread(target=self._serve, name="sam2-device", daemon=True)
        self._thread.start()

    def encode(self, image: np.ndarray, timer: StageTimer, lane: Lane | None = None,
               segmenter: Segmenter | None = None) -> Embedding:
        """The embedding of an ``(H, W, 3)`` uint8 RGB image (by ``segmenter``'s model, default this thread's)."""
        return self._submit(_Job(run=None, lane=lane or Lane(None, "encoder"), image=image, timer=timer,
                                 segmenter=segmenter))

    def decode(self, embedding: Embedding, prompts: list[Prompt], timer: StageTimer,
               mask_inputs: Sequence[Any] | None = None, lane: Lane | None = None,
               segmenter: Segmenter | None = None) -> list[Mask]:
        """One bit-packed mask per prompt, each with its mask input if any: the masks of
        :meth:`Segmenter.decode_many`, each of its decoder calls a job of its own, so that other
        callers' jobs run between the calls of a request with many prompts."""
        mask_inputs = list(mask_inputs) if mask_inputs is not None else [None] * len(prompts)
        masks: list[Mask | None] = [None] * len(prompts)
        model = segmenter or self.segmenter
        for indices in model.decoder_calls(prompts, mask_inputs):
            found = self.call(lambda indices=indices: model.decode_call(embedding, prompts, mask_inputs, indices),
                              "decoder", timer, lane, segmenter=segmenter)
            for index, mask in zip(indices, found):
                masks[index] = mask
        return masks

    def call(self, run: Callable[[], Any], stage: str, timer: StageTimer | None = None, lane: Lane | None = None,
             long: bool = False, expected_s: float | None = None, segmenter: Segmenter | None = None) -> Any:
        """``run()`` on the device thread, in ``lane``'s turn (default: no tenant, ``stage`` as the
        route); its time is recorded as ``stage``. ``long``: ``run`` calls :meth:`checkpoint`
        between its steps; ``expected_s``: how long it should take, for :meth:`seconds_ahead`;
        ``segmenter``: the model it runs (default this thread's), whose typical times it counts in."""
        return self._submit(_Job(run=run, lane=lane or Lane(None, stage), stage=stage, timer=timer, long=long,
                                 expected_s=expected_s, segmenter=segmenter))

    def checkpoint(self) -> None:
        """From inside a long job (or between the blocks of an encoder pass on the CPU), on the
        device thread: run queued short jobs, in turn by device time (the job's tenant is charged
        for its step first), for up to :data:`SHORT_FIRST` times as long as the job's step since its
        previous checkpoint took, a long job's or an encoder pass's block (one job at least; in an
        encoder pass, other encoder passes only where one fits in its step), then return to the job."""
        if threading.get_ident() != self._thread.ident:
            raise RuntimeError("checkpoint() is for jobs running on the device thread")
        paused_at = time.perf_counter()
        step = paused_at - self._resumed
        running = self._running
        with self._ready:
            if running is not None:
                self._lanes.charge(running.lane.tenant, step)
        paused = self._model(running)
        pausing, paused.between_blocks = paused.between_blocks, None  # not in others' jobs
        try:
            # In a long job (up to its deadline) a new image's encoder pass may run whole; in an
            # encoder pass, only where one fits in its step (else it waits for the loop, seconds).
            in_encode = running is not None and not running.long
            budget = SHORT_FIRST * step
            while (self._serve_one(step - (time.perf_counter() - paused_at) if in_encode else None)
                   and time.perf_counter() - paused_at < budget):
                pass
        finally:
            paused.between_blocks = pausing
        self._resumed = time.perf_counter()
        self._paused += self._resumed - paused_at
        if step > 0 and running is not None and running.long:
            with self._ready:
                self._stretch += STRETCH_WEIGHT * ((self._resumed - paused_at) / step - self._stretch)

    def stretch(self) -> float:
        """How much longer than its own work a long job takes lately, as a fraction of it (0 to
        about :data:`SHORT_FIRST`): the share of other callers' jobs run at its checkpoints."""
        with self._ready:
            return self._stretch

    def typical_s(self, stage: str, segmenter: Segmenter | None = None) -> float:
        """How long a job of ``stage`` on ``segmenter``'s model (default this thread's) has taken
        lately, in seconds (0 before the first)."""
        with self._ready:
            return self._typical.get(((segmenter or self.segmenter).name, stage), 0.0)

    def seconds_ahead(self, lane: Lane) -> float:
        """An estimate of the device time that may pass before a job queued now in ``lane`` starts:
        the rest of the running job, the tenant's own queued jobs, and, of each other tenant's, as
        many as the turns that takes (round-robin serves each tenant one job per turn)."""
        with self._ready:
            ahead = 0.0
            running = self._running
            if running is not None and not running.done.done():  # its caller may be the one asking
                ahead += max(0.0, self._expected(running) - (time.perf_counter() - running.started_at))
            own = self._lanes.of_tenant(lane.tenant)
            ahead += sum(self._expected(job) for job in own)
            for tenant in self._lanes.tenants():
                if tenant != lane.tenant:
                    ahead += sum(self._expected(job) for job in self._lanes.of_tenant(tenant)[: len(own) + 1])
            return ahead

    def warm_up(self) -> None:
        """Pay lazy initialisation on the device thread itself, before the first request; with
        batching on, at the largest batch too."""
        self.call(self.segmenter.warm_up, "warm_up")
        if self.max_batch > 1:
            image = np.zeros((64, 64, 3), dtype=np.uint8)
            self.call(lambda: self.segmenter.encode_batch([image] * self.max_batch), "warm_up")

    def _expected(self, job: _Job) -> float:
        return job.expected_s if job.expected_s is not None else self._typical.get((self._model(job).name, job.stage), 0.0)

    def _model(self, job: _Job | None) -> Segmenter:
        return job.segmenter if job is not None else self.segmenter

    def _submit(self, job: _Job) -> Any:
        job.segmenter = job.segmenter or self.segmenter
        with self._ready:
            self._lanes.put(job)
            self._ready.notify()
        return job.done.result()

    def _serve(self) -> None:
        while True:
            with self._ready:
                while (job := self._lanes.take()) is None:
                    self._ready.wait()
                self._running = job
            self._dispatch(job, wait=self.max_wait)
            with self._ready:
                self._running = None

    def _serve_one(self, within: float | None) -> bool:
        """Run the next queued short job in turn; a new image's encoder pass only if one typically
        takes at most ``within`` seconds, if given (one run from here runs whole, holding up every
        caller); False if there was none."""
        with self._ready:
            slowest = max((s for (_, stage), s in self._typical.items() if stage == "encoder"), default=0.0)
            encodes = within is None or slowest <= within
            job = self._lanes.take(short_only=True, encodes=encodes)
        if job is None:
            return False
        self._dispatch(job, wait=0.0, nested=True)
        return True

    def _dispatch(self, job: _Job, wait: float, nested: bool = False) -> None:
        """Run ``job``; an encode job with any other queued encodes (up to ``max_batch``), waiting
        up to ``wait`` seconds for more to arrive. ``nested``: from a checkpoint."""
        job.started_at = time.perf_counter()
        if not nested:
            self._resumed, self._paused = job.started_at, 0.0
        if job.run is not None:
            self._run(job)
            return
        batch = [job]
        deadline = time.monotonic() + wait
        with self._ready:
            while len(batch) < self.max_batch:
                other = self._lanes.take_encode(job.segmenter)
                if other is not None:
                    batch.append(other)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
        self._encode(batch, pausing=not nested)

    def _run(self, job: _Job) -> None:
        started = time.perf_counter()
        _record(job, "queue", started - job.queued_at)
        model = self._model(job)
        if job.long:  # its own encoder passes (segment everything's image and crops) pause too
            model.between_blocks = self.checkpoint
        try:
            result = job.run()
        except BaseException as exc:  # the caller gets it; the thread lives on
            job.done.set_exception(exc)
            return
        finally:
            model.between_blocks = None
            with self._ready:  # a long job's steps before its last checkpoint were charged there
                self._lanes.charge(job.lane.tenant, time.perf_counter() - (self._resumed if job.long else started))
        self._took(job, job.stage, time.perf_counter() - started)
        job.done.set_result(result)

    def _encode(self, batch: list[_Job], pausing: bool) -> None:
        """``pausing``: the pass may stop at checkpoints between its blocks (on the CPU; see
        :attr:`Segmenter.between_blocks`), the batch's first job's tenant charged for its steps."""
        started = time.perf_counter()
        for job in batch:
            _record(job, "queue", started - job.queued_at)
        model = self._model(batch[0])  # take_encode batches one model's images
        model.between_blocks = self.checkpoint if pausing else None
        try:
            embeddings = model.encode_batch([job.image for job in batch])
            model.synchronize()  # so that the time below is the encoder's
        except BaseException as exc:  # every waiter learns why
            for job in batch:
                job.done.set_exception(exc)
            return
        finally:
            model.between_blocks = None
        elapsed = time.perf_counter() - started - (self._paused if pausing else 0.0)  # its own time
        metrics.ENCODER_BATCH_SIZE.observe(len(batch))
        with self._ready:
            last_step = time.perf_counter() - (self._resumed if pausing else started)
            for job in batch:
                self._lanes.charge(job.lane.tenant, last_step / len(batch))
        for job, embedding in zip(batch, embeddings):
            self._took(job, "encoder", elapsed)
            job.done.set_result(embedding)

    def _took(self, job: _Job, stage: str, seconds: float) -> None:
        _record(job, stage, seconds)
        key = (self._model(job).name, stage)
        with self._ready:
            last = self._typical.get(key)
            self._typical[key] = seconds if last is None else last + TYPICAL_WEIGHT * (seconds - last)


def _record(job: _Job, stage: str, seconds: float) -> None:
    if job.timer is not None:
        job.timer.add(stage, seconds)
