"""Segment everything on the model service: Meta's automatic mask generator over our cached embedding.

The work is Meta's own ``SAM2AutomaticMaskGenerator.generate`` (point grids, batches, filters, NMS
within and across crops, RLE): its output equals the generator's for the same weights, image and
parameters by construction (tests compare them). What is ours:

- the predictor it drives is :class:`_CachedPredictor`, whose ``set_image`` serves the whole image
  from the embedding cache (so a repeat request skips the encoder, and the other routes share it)
  and encodes crops with :class:`Segmenter` (the same computation as ``set_image``);
- a :class:`Deadline`, checked before the first batch against the whole request's expected time
  (:class:`Pace`, measured on this device) and before each batch of points and each crop's encoder
  pass, which stops a request that would run past it with a 503 saying what to reduce;
- a pause before each batch and each crop's encoder pass, where the device thread serves other
  callers' short jobs (:meth:`DeviceThread.checkpoint`): a click waits for one batch, not for the
  whole request;
- two of the helpers Meta's methods call, swapped for exact equivalents that do not cost time per
  mask in Python: :func:`_mask_to_rle` (one device-to-host copy per batch instead of a filter, a
  copy and a sync per mask) and :class:`_MaskData` (no deep copy of every run-length list each
  time results are gathered). The methods themselves run Meta's code objects as they are
  (:func:`_with_helpers`).

Everything here runs on the device thread (one long job per request, :meth:`DeviceThread.call`). The
generator and its predictor are built per request: no state is shared between requests.
"""

from __future__ import annotations

import threading
import time
import types
from typing import Any, Callable

import numpy as np
import torch
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.amg import MaskData

from ..errors import DeadlineExceeded
from ..messages import EverythingObject, EverythingParams, Plan
from .segmenter import Embedding, Segmenter

PACE_WEIGHT = 0.3  # of the latest batch in the measured pace (an exponential moving average)
# Work is let in only when it fits with this much to spare: other callers' jobs run between its
# batches, and a shared machine's speed varies (one CPU run: 32 % slower than the pace measured).
ESTIMATE_MARGIN = 1.25


class Pace:
    """How fast this device runs Meta's generator, measured: seconds per unit of a batch's work,
    the unit being a byte of its estimated peak memory (:func:`work_per_point` per point), which grows
    as the work does: with the points, and with the pixels of each candidate mask. Recent batches
    weigh most; None before the first batch."""

    def __init__(self) -> None:
        self.per_byte: float | None = None
        self._lock = threading.Lock()

    def record(self, seconds: float, points: int, per_point: float) -> None:
        rate = seconds / (points * per_point)
        with self._lock:
            self.per_byte = rate if self.per_byte is None else self.per_byte + PACE_WEIGHT * (rate - self.per_byte)

    def seconds(self, params: EverythingParams, plan: Plan, encoder_s: float) -> float:
        """The expected device time of ``plan``: its points, and one encoder pass of ``encoder_s``
        per crop (0 before anything was measured)."""
        return plan.points * work_per_point(params, plan) * (self.per_byte or 0.0) + plan.crops * encoder_s


def work_per_point(params: EverythingParams, plan: Plan) -> float:
    """A point's work in a batch: its bytes of the batch's estimated peak, twice with ``use_m2m``
    (a second decoder pass over the masks kept)."""
    return plan.bytes_per_point * (2 if params.use_m2m else 1)


class Deadline:
    """A request's end time on this process's monotonic clock, how long its work is expected to take
    on the device (seconds, from :class:`Pace`), and how far its work got."""

    def __init__(self, at: float, seconds: float, params: EverythingParams, plan: Plan,
                 expected_s: float = 0.0, pace: Pace | None = None) -> None:
        self.at = at
        self.seconds = seconds
        self.params = params
        self.plan = plan
        self.expected_s = expected_s
        self.pace = pace
        self.points_done = 0
        self.longest = {"batch": 0.0, "encoder": 0.0}  # the longest step of each kind so far

    def check_start(self, ahead_s: float = 0.0, encoder_s: float = 0.0) -> None:
        """Before any work: raise :class:`DeadlineExceeded` unless ``ahead_s`` seconds of other
        requests' device work, then this request's image encoder pass (``encoder_s``) and its
        expected time, end in time with :data:`ESTIMATE_MARGIN` to spare."""
        needs = encoder_s + self.expected_s
        if time.monotonic() + ESTIMATE_MARGIN * (ahead_s + needs) > self.at:
            why = f"it needs about {needs:.0f} s on the device for its {self.plan.points} points"
            if ahead_s >= 0.5:
                why += f", after about {ahead_s:.0f} s of other requests' work queued before it"
            left = max(0.0, self.at - time.monotonic())
            why += f"; with a {ESTIMATE_MARGIN - 1:.0%} margin that is more than the {left:.0f} s left"
            raise DeadlineExceeded(self._advice(why + "; nothing was computed", busy=ahead_s >= 0.5))

    def check(self, step: str) -> None:
        """Raise :class:`DeadlineExceeded` unless a ``step`` as long as the longest so far still fits."""
        if time.monotonic() + self.longest[step] > self.at:
            raise DeadlineExceeded(self._advice(f"{self.points_done} of {self.plan.points} points were done"))

    def took(self, step: str, seconds: float, points: int = 0) -> None:
        """A ``step`` ("batch" of ``points`` points, or "encoder") took ``seconds``."""
        self.longest[step] = max(self.longest[step], seconds)
        if step == "batch":
            self.points_done += points
            if self.pace is not None:
                self.pace.record(seconds, points, work_per_point(self.params, self.plan))

    def _advice(self, why: str, busy: bool = False) -> str:
        params = self.params
        return (
            f"segment everything would not finish within its {self.seconds:g} s deadline "
            f"(SAM2_EVERYTHING_DEADLINE_S): {why}; " + ("retry in a while, or " if busy else "")
            + f"reduce points_per_side ({params.points_per_side}) or crop_n_layers ({params.crop_n_layers})"
            + (", turn off use_m2m" if params.use_m2m else "")
            + ", or send a smaller image"
        )


class _CachedPredictor(SAM2ImagePredictor):
    """Meta's predictor, set from our embedding for the whole image and from our encoder for crops."""

    def __init__(self, segmenter: Segmenter, embedding: Embedding, deadline: Deadline, pause: Callable[[], None],
                 min_mask_region_area: int):
        super().__init__(segmenter.model, max_hole_area=min_mask_region_area, max_sprinkle_area=min_mask_region_area)
        self._segmenter = segmenter
        self._embedding = embedding
        self._deadline = deadline
        self._pause = pause

    def set_image(self, image: np.ndarray) -> None:
        """``image``: the whole upright image or a crop of it, ``(h, w, 3)`` uint8 RGB. Only a crop
        has the shape of the whole image when it is the whole image (Meta's crops are all smaller)."""
        self.reset_predictor()
        if tuple(image.shape[:2]) == tuple(self._embedding.orig_hw):
            embedding = self._embedding
        else:
            self._pause()
            self._deadline.check("encoder")
            started = time.monotonic()
            embedding = self._segmenter.encode(np.ascontiguousarray(image))
            self._deadline.took("encoder", time.monotonic() - started)
        self._orig_hw = [tuple(embedding.orig_hw)]
        self._features = {"image_embed": embedding.image_embed, "high_res_feats": list(embedding.high_res_feats)}
        self._is_image_set = True


def _mask_to_rle(tensor: torch.Tensor) -> list[dict[str, Any]]:
    """``sam2.utils.amg.mask_to_rle_pytorch``'s uncompressed RLE of ``B×H×W`` bool masks, the same
    lists of ints, with the run boundaries found on the device and copied to the host once."""
    count, height, width = tensor.shape
    if count == 0:
        return []
    flat = tensor.permute(0, 2, 1).flatten(1)  # column-major, as COCO's RLE
    changes = (flat[:, 1:] ^ flat[:, :-1]).nonzero().cpu().numpy()  # (mask, index) pairs, mask-major
    starts_on = flat[:, 0].cpu().numpy()
    per_mask = np.split(changes[:, 1], np.searchsorted(changes[:, 0], np.arange(1, count)))
    out = []
    for index, cuts in enumerate(per_mask):
        bounds = np.concatenate(([0], cuts + 1, [height * width]))
        counts = [0] if starts_on[index] else []
        counts.extend(np.diff(bounds).tolist())
        out.append({"size": [height, width], "counts": counts})
    return out


class _MaskData(MaskData):
    """Meta's ``MaskData`` gathering batches without deep copies: its callers never touch what
    they hand to :meth:`cat` again (``del batch_data``), so copying each run-length list (Python
    ints, one per run) only costs time."""

    def cat(self, new_stats: MaskData) -> None:
        for key, value in new_stats.items():
            if self._stats.get(key) is None:
                self._stats[key] = value
            elif isinstance(value, torch.Tensor):
                self._stats[key] = torch.cat([self._stats[key], value], dim=0)
            elif isinstance(value, np.ndarray):
                self._stats[key] = np.concatenate([self._stats[key], value], axis=0)
            elif isinstance(value, list):
                self._stats[key] = self._stats[key] + value
            else:
                raise TypeError(f"MaskData key {key} has an unsupported type {type(value)}.")


def _with_helpers(method: Callable, **helpers: Any) -> Callable:
    """``method`` (one of Meta's), its own code object, with the module-level names in ``helpers``
    looked up as given instead: only for the class that uses the result, never for Meta's."""
    assert not method.__code__.co_freevars, f"{method.__qualname__} closes over names: cannot rebind it"
    names = {**method.__globals__, **helpers}
    return types.FunctionType(method.__code__, names, method.__name__, method.__defaults__, method.__closure__)


_FAST_HELPERS = {"mask_to_rle_pytorch": _mask_to_rle, "MaskData": _MaskData}


class _Generator(SAM2AutomaticMaskGenerator):
    """Meta's generator with a pause and a deadline between batches, the fast helpers, and an empty result,
    not an IndexError, when no crop keeps a mask (Meta's cross-crop NMS indexes a 1-D empty tensor
    then)."""

    _generate_masks = _with_helpers(SAM2AutomaticMaskGenerator._generate_masks, **_FAST_HELPERS)
    _meta_process_crop = _with_helpers(SAM2AutomaticMaskGenerator._process_crop, **_FAST_HELPERS)
    _meta_process_batch = _with_helpers(SAM2AutomaticMaskGenerator._process_batch, **_FAST_HELPERS)

    def __init__(self, predictor: _CachedPredictor, deadline: Deadline, pause: Callable[[], None], **kwargs) -> None:
        super().__init__(predictor.model, output_mode="coco_rle", **kwargs)
        self.predictor = predictor
        self._deadline = deadline
        self._pause = pause

    def _process_crop(self, image, crop_box, crop_layer_idx, orig_size) -> MaskData:
        data = self._meta_process_crop(image, crop_box, crop_layer_idx, orig_size)
        if len(data["rles"]) == 0:
            data["crop_boxes"] = torch.zeros((0, 4))
        return data

    def _process_batch(self, points, im_size, crop_box, orig_size, normalize=False) -> MaskData:
        self._pause()
        self._deadline.check("batch")
        started = time.monotonic()
        data = self._meta_process_batch(points, im_size, crop_box, orig_size, normalize=normalize)
        self._deadline.took("batch", time.monotonic() - started, len(points))
        return data


def has_hole_filling(device: torch.device) -> bool:
    """Whether ``min_mask_region_area`` can work: Meta's predictor needs sam2's compiled CUDA
    extension for it (connected components) and skips that step, with a warning, without it."""
    if device.type != "cuda":
        return False
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def segment_everything(segmenter: Segmenter, embedding: Embedding, image: np.ndarray | None,
                       params: EverythingParams, plan: Plan, deadline: Deadline,
                       checkpoint: Callable[[], None] = lambda: None) -> tuple[list[EverythingObject], int]:
    """Meta's generator on the image of ``embedding``: the objects, largest first (at most
    ``params.max_objects``), and how many it found in all. ``image``: the ``(H, W, 3)`` uint8 RGB
    pixels, needed for crops only (None without crops: the embedding is all the generator uses).
    ``checkpoint`` runs before each batch and each crop's encoder pass (other callers' jobs:
    :meth:`DeviceThread.checkpoint`), outside the generator's torch modes."""
    height, width = embedding.orig_hw
    if image is None:
        # The generator slices crops out of the image and reads its size; without crops the only
        # "crop" is the whole image, which _CachedPredictor serves from the embedding.
        image = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (height, width, 3))

    def pause() -> None:
        # Each job runs as it would on its own: tensors it makes (cached embeddings, a clip's state)
        # must not be inference tensors, nor its computation autocast as the generator's is.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(segmenter.device.type, enabled=False):
            checkpoint()

    deadline.check_start()  # before anything is computed, now that the device is this request's
    predictor = _CachedPredictor(segmenter, embedding, deadline, pause, params.min_mask_region_area)
    generator = _Generator(predictor, deadline, pause, **params.generator_kwargs(plan.points_per_batch))
    with torch.inference_mode(), segmenter.autocast():
        records = generator.generate(image)
    order = sorted(range(len(records)), key=lambda i: -records[i]["area"])  # stable: Meta's order on ties
    objects = [
        EverythingObject(
            counts=records[i]["segmentation"]["counts"],
            area=int(records[i]["area"]),
            predicted_iou=float(records[i]["predicted_iou"]),
            stability_score=float(records[i]["stability_score"]),
            point_coords=[[float(c) for c in point] for point in records[i]["point_coords"]],
        )
        for i in order[: params.max_objects]
    ]
    return objects, len(records)
