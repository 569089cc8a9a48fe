"""SAM 2's video predictor over one decoded clip, on the image model's weights: a job's session,
and what its memory costs.

The computation is Meta's own: ``SAM2VideoPredictor.add_new_points_or_box`` for every prompt, then
``propagate_in_video``, on a predictor built as ``build_sam2_video_predictor`` builds it (Meta's
video settings) whose parameters are the image model's own tensors (no second copy of the weights).
The masks equal the predictor's, pixel for pixel, on the same decoded frames
(tests/unit/test_tracking.py). Two things differ here (the third, scheduling, is
:mod:`sam2_api.model.track_queue`'s), none of them in what is computed:

- **Frames.** Meta's loader keeps every frame as a normalised ``3×S×S`` float32 tensor (12 MiB a
  frame at S = 1024). :class:`FrameStore` keeps the processed range's frames as uint8, resized by
  the same PIL call (3 MiB a frame), and normalises a frame with the very float operations of
  ``load_video_frames`` when the model reads it, so the model sees bit-identical input.
- **State.** The predictor keeps every tracked frame's memory for later clicks. A job makes no
  later clicks, so once a frame is further back than any later frame reads (SAM 2 attends to the
  last ``num_maskmem`` frames' memories and ``max_obj_ptrs_in_encoder`` frames' object pointers;
  prompted frames are always kept), its outputs are dropped: the state stays at a few MiB per
  object however long the clip.

Memory of one job (S = the model's input size, 1024 for every SAM 2.1 checkpoint): 3·S² bytes per
frame of the processed range (on the GPU, or in host memory when offloaded); per object about
``(reach + 1 + prompted frames) × (mem_dim·(S/16)²·2 + (S/4)²·4)`` bytes of state, 12.8 MiB for
hiera models at S = 1024, and 1 MiB per job (:func:`state_bytes`); plus one frame's activations.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from sam2.build_sam import build_sam2_video_predictor
from sam2.modeling.sam2_base import SAM2Base
from sam2.sam2_video_predictor import SAM2VideoPredictor

from ..messages import TrackedFrame, TrackPrompt

# sam2 is installed without its optional CUDA extension (SAM2_BUILD_CUDA=0, scripts/setup.sh); its
# video predictor then skips hole filling, which SAM2VideoPredictor's own masks skip too, and warns.
warnings.filterwarnings("ignore", "cannot import name '_C' from 'sam2'", UserWarning)

# load_video_frames' normalisation (ImageNet's mean and standard deviation, per RGB channel)
FRAME_MEAN = (0.485, 0.456, 0.406)
FRAME_STD = (0.229, 0.224, 0.225)
MASK_THRESHOLD = 0.0  # video_res_masks > 0.0, as Meta's examples threshold them


def share_weights(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Make every parameter and buffer of ``target`` the very tensor of ``source`` with the same
    name (both built from one config); a name or shape that differs is an error."""
    parameters = dict(source.named_parameters(remove_duplicate=False))
    buffers = dict(source.named_buffers(remove_duplicate=False))
    for module_name, module in target.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for owned, shared in ((module._parameters, parameters), (module._buffers, buffers)):
            for name, tensor in list(owned.items()):
                if tensor is None:
                    continue
                other = shared.get(prefix + name)
                if other is None or other.shape != tensor.shape:
                    raise ValueError(f"cannot share {prefix}{name}: the two models differ there")
                owned[name] = other


def build_video_model(config: str, image_model: SAM2Base, overrides: tuple[str, ...] = ()) -> SAM2VideoPredictor:
    """Meta's video predictor for ``config`` (``build_sam2_video_predictor``'s settings, and hydra
    ``overrides`` if any), on ``image_model``'s device and holding ``image_model``'s weights, not a
    copy of them."""
    model = build_sam2_video_predictor(config, None, device="cpu", hydra_overrides_extra=list(overrides))
    share_weights(model, image_model)
    return model.to(image_model.device).eval()


def memory_reach(model: SAM2Base) -> int:
    """How many frames back (in processing order) tracking a frame reads other frames' outputs:
    the spatial memories of the last ``num_maskmem - 1`` (every ``stride``-th) and the object
    pointers of the last ``max_obj_ptrs_in_encoder - 1`` (``_prepare_memory_conditioned_features``)."""
    stride = model.memory_temporal_stride_for_eval
    return max(1 + stride * (model.num_maskmem - 2), model.max_obj_ptrs_in_encoder - 1)


def frame_bytes(model: SAM2Base) -> int:
    """Bytes of one stored frame (uint8 at the model's input size)."""
    return 3 * model.image_size**2


def state_bytes_per_object(model: SAM2Base, prompted_frames: int = 1) -> int:
    """An upper bound of one object's tracking state: the outputs kept for ``memory_reach + 1``
    frames and every prompted frame, each a bf16 memory (``mem_dim × (S/16)²``), a float32
    low-resolution mask (``(S/4)²``), its object pointer and score."""
    size = model.image_size
    per_frame = model.mem_dim * (size // 16) ** 2 * 2 + (size // 4) ** 2 * 4 + model.hidden_dim * 4 + 4
    return (memory_reach(model) + 1 + prompted_frames) * per_frame


def state_bytes(model: SAM2Base, objects: int, prompted_frames: int = 1) -> int:
    """An upper bound of a job's tracking state: its objects', and the memories' positional
    encoding that all frames share (float32, ``mem_dim × (S/16)²``)."""
    return objects * state_bytes_per_object(model, prompted_frames) + model.mem_dim * (model.image_size // 16) ** 2 * 4


def plan_offload(setting: str, device: torch.device, frames: int, state: int, budget: int) -> tuple[bool, bool]:
    """``(offload_video_to_cpu, offload_state_to_cpu)`` for a job of ``frames`` + ``state`` bytes."""
    if device.type != "cuda":
        return False, False  # host memory is the only memory there
    if setting != "auto":
        return setting != "none", setting == "frames_and_state"
    if frames + state <= budget:
        return False, False
    return True, state > budget


def processed_range(num_frames: int, start: int, max_frames: int | None, reverse: bool) -> tuple[int, int]:
    """``(first, last)`` frames of ``propagate_in_video(start, max_frames - 1, reverse)``, inclusive,
    in processing order (Meta's ``max_frame_num_to_track`` counts the frames after the first)."""
    track = num_frames if max_frames is None else max_frames - 1
    if reverse:
        return start, max(start - track, 0)
    return start, min(start + track, num_frames - 1)


class FrameStore:
    """The frames SAM 2 reads, as ``inference_state["images"]``: ``store[i]`` is frame ``i`` as the
    ``3×S×S`` float32 tensor ``load_video_frames`` would hold, on the compute device.

    Frames are kept as ``S×S×3`` uint8, resized by the PIL call of Meta's frame loader
    (``Image.resize((S, S))``); a frame read is normalised through a per-channel table of the
    256 values ``((v / 255 in float64, as float32) - mean) / std``, the float32 operations the
    loader applies to the whole clip, so every value is the loader's to the bit.
    """

    def __init__(self, size: int, compute: torch.device) -> None:
        self.size = size
        self.compute = compute
        self._frames: dict[int, torch.Tensor] = {}
        levels = (torch.arange(256, dtype=torch.float64) / 255.0).float()
        mean = torch.tensor(FRAME_MEAN, dtype=torch.float32)[:, None]
        std = torch.tensor(FRAME_STD, dtype=torch.float32)[:, None]
        self._table = ((levels[None, :] - mean) / std).to(compute)  # 3 × 256

    def put(self, index: int, frame: np.ndarray) -> None:
        resized = Image.fromarray(frame).resize((self.size, self.size))
        self._frames[index] = torch.from_numpy(np.asarray(resized).copy())

    def move_to(self, device: torch.device) -> None:
        self._frames = {index: pixels.to(device) for index, pixels in self._frames.items()}

    def __getitem__(self, index: int) -> torch.Tensor:
        pixels = self._frames[index].to(self.compute, non_blocking=True)
        codes = pixels.permute(2, 0, 1).reshape(3, -1).long()
        return self._table.gather(1, codes).view(3, self.size, self.size)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        return sum(pixels.numel() for pixels in self._frames.values())


def new_inference_state(model: SAM2VideoPredictor, images: FrameStore, num_frames: int, height: int, width: int,
                        offload_video: bool, offload_state: bool) -> dict:
    """``SAM2VideoPredictor.init_state``'s dictionary for frames already loaded (``images``):
    the same keys and values, without reading a file (and without its warm-up encode of frame 0,
    which only fills a cache)."""
    device = model.device
    return {
        "images": images,
        "num_frames": num_frames,
        "offload_video_to_cpu": offload_video,
        "offload_state_to_cpu": offload_state,
        "video_height": height,
        "video_width": width,
        "device": device,
        "storage_device": torch.device("cpu") if offload_state else device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


class Session:
    """One clip's tracking: its frames, SAM 2's inference state and the propagation, advanced one
    frame per :meth:`next_frame`. Not thread-safe: the device thread drives it."""

    def __init__(self, model: SAM2VideoPredictor, state: dict, prompts: list[TrackPrompt], objects: int,
                 start: int, max_frames: int | None, reverse: bool, pack: Callable[[torch.Tensor], bytes]) -> None:
        self.model = model
        self.state = state
        self.prompts = prompts
        self.objects = objects
        self.start = start
        self.max_frames = max_frames
        self.reverse = reverse
        self.pack = pack
        self.reach = memory_reach(model)
        self._propagation: Iterator | None = None

    def add_prompts(self) -> None:
        """``add_new_points_or_box`` for each prompt, object by object (object ``i`` is SAM 2's
        object id ``i``), each object's prompts in the order given."""
        for prompt in sorted(self.prompts, key=lambda p: p.object_index):
            points, labels = prompt.prompt.point_arrays()
            self.model.add_new_points_or_box(
                self.state, frame_idx=prompt.frame_index, obj_id=prompt.object_index,
                points=points, labels=labels, box=prompt.prompt.box_array(),
            )

    def next_frame(self) -> TrackedFrame | None:
        """Track the next frame; None after the last."""
        if self._propagation is None:
            self._propagation = self.model.propagate_in_video(
                self.state, start_frame_idx=self.start,
                max_frame_num_to_track=None if self.max_frames is None else self.max_frames - 1,
                reverse=self.reverse,
            )
        try:
            frame_index, object_ids, masks = next(self._propagation)
        except StopIteration:
            return None
        self._forget_behind(frame_index)
        row = {object_id: i for i, object_id in enumerate(object_ids)}
        return TrackedFrame(frame_index=frame_index,
                            masks=[self.pack(masks[row[k], 0] > MASK_THRESHOLD) for k in range(self.objects)])

    def _forget_behind(self, frame_index: int) -> None:
        """Drop the outputs of frames that no later frame of this pass reads (prompted frames'
        outputs live elsewhere and stay)."""
        step = -1 if self.reverse else 1
        oldest_read_next = frame_index + step * (1 - self.reach)
        for outputs in self.state["output_dict_per_obj"].values():
            frames = outputs["non_cond_frame_outputs"]
            for old in [f for f in frames if (f < oldest_read_next if step > 0 else f > oldest_read_next)]:
                del frames[old]

    def nbytes(self) -> int:
        """Bytes of the tensors of the tracking state (per-object outputs, inputs, cached features)."""
        seen: set[int] = set()
        total = 0

        def visit(node) -> None:
            nonlocal total
            if isinstance(node, torch.Tensor):
                key = node.untyped_storage().data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += node.untyped_storage().nbytes()
            elif isinstance(node, dict):
                for value in node.values():
                    visit(value)
            elif isinstance(node, (list, tuple)):
                for value in node:
                    visit(value)

        for key in ("output_dict_per_obj", "temp_output_dict_per_obj", "point_inputs_per_obj", "constants"):
            visit(self.state[key])
        return total
