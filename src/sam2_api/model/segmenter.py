"""SAM 2's image encoder and mask decoder, with per-image state kept in values.

``SAM2ImagePredictor`` keeps the current image's features on the object between ``set_image`` and
``predict``, so two threads sharing it can mix their images. :class:`Segmenter` runs the same
computation, step for step, but returns the features as an :class:`Embedding` value that the
caller passes back in; the masks are pixel-identical to the predictor's (tests assert it).

Everything runs on the model's device: the uint8 image goes there as it is and is resized and
normalised there (on the CPU these are the very operations ``SAM2Transforms`` runs, bit for bit),
and each returned mask is upsampled, thresholded and bit-packed there, so only ``H·W/8`` bytes per
mask come back. Each returned mask keeps its ``256×256`` low-resolution logits (on the device), as
``SAM2ImagePredictor.predict`` returns them, to be fed back as the next click's ``mask_input``.
:class:`Segmenter` holds no lock: :class:`sam2_api.model.device_thread.DeviceThread` is the
one thread that calls it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.transforms import SAM2Transforms

from ..imaging import pack_mask, unpack_mask
from ..prompts import Prompt

MASK_THRESHOLD = 0.0  # logits above this are object, as in SAM2ImagePredictor
LOGIT_BOUND = 32.0  # SAM2ImagePredictor clamps the low-res logits it returns to ±32
# Prompts per decoder call, which bounds its memory for requests with many objects: 8 on a GPU. On
# a CPU batching saves nothing (8 prompts of a 1024x1024 image took 3.2-4.4 s batched, 4.3 s one by
# one) and a call runs whole, so another caller's click waits for it: there each prompt is its own
# call, exactly SAM2ImagePredictor.predict's computation for that prompt alone.
GPU_DECODER_BATCH = 8
CPU_DECODER_BATCH = 1

# Images arrive as read-only arrays (they sit where the request landed) and are only ever read;
# torch warns about read-only memory on every from_numpy.
warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # pack_mask's order: the first pixel is the high bit


@dataclass(frozen=True)
class Embedding:
    """One image's encoder output.

    ``image_embed`` is ``1×256×(S/16)×(S/16)`` and ``high_res_feats`` the two finer levels, where S
    is the model's input size (1024); ``orig_hw`` is the upright image's ``(H, W)`` in pixels.
    """

    image_embed: torch.Tensor
    high_res_feats: tuple[torch.Tensor, ...]
    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.image_embed, *self.high_res_feats))


@dataclass(frozen=True)
class Mask:
    """One returned mask at the image's size, as the bits of its ``(H, W)`` pixels (True = object;
    :func:`sam2_api.imaging.pack_mask`'s layout), and its predicted IoU.

    ``logits``: its ``256×256`` float32 low-resolution logits on the device, clamped to ±32, exactly
    the ``low_res_masks`` row that ``SAM2ImagePredictor.predict`` returns for it. ``others``: when
    the prompt asked for ``candidates``, SAM 2's other masks for it, by descending score.
    """

    bits: bytes
    score: float
    hw: tuple[int, int]
    logits: torch.Tensor | None = None
    others: tuple["Mask", ...] = ()

    def pixels(self) -> np.ndarray:
        return unpack_mask(self.bits, *self.hw)


class Segmenter:
    """Encoder + decoder over one SAM 2 model, on the model's device. Not thread-safe by itself."""

    def __init__(self, model: SAM2Base, decoder_batch: int | None = None, name: str = "") -> None:
        self.model = model
        self.name = name  # the model's id, when a device thread serves several (sam2_api.model.model_set)
        self.device = model.device
        # prompts per decoder call (:meth:`decoder_calls`); None: this device's default
        self.decoder_batch = decoder_batch or (GPU_DECODER_BATCH if self.device.type == "cuda" else CPU_DECODER_BATCH)
        with warnings.catch_warnings():
            # sam2 scripts its resize with torch.jit, which torch now deprecates; nothing to act on.
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            self._transforms = SAM2Transforms(resolution=model.image_size, mask_threshold=MASK_THRESHOLD)
        size = model.image_size
        self._feature_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._bit_weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=self.device)
        # Called after each block of the image encoder's trunk, when set (on the CPU only, where an
        # encoder pass takes seconds): the device thread runs other callers' short jobs there
        # (:meth:`sam2_api.model.device_thread.DeviceThread.checkpoint`). Unset while it runs, so that an encoder
        # pass run from there does not pause in turn.
        self.between_blocks: Callable[[], None] | None = None
        if self.device.type == "cpu":
            for block in model.image_encoder.trunk.blocks:
                block.register_forward_hook(self._after_block)

    def _after_block(self, *_: Any) -> None:
        pause, self.between_blocks = self.between_blocks, None
        if pause is not None:
            try:
                pause()
            finally:
                self.between_blocks = pause

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 on CUDA, as Meta's examples run SAM 2; full precision on the CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA runs asynchronously), e.g. to time it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def model_input(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB → ``3×S×S`` normalised float on the device: ``SAM2Transforms``'
        ToTensor, Resize and Normalize, applied after the uint8 pixels (not a float copy) crossed.
        One full-size float copy (12 bytes a pixel), converted and divided in place."""
        pixels = torch.from_numpy(image).to(self.device, non_blocking=True)  # read-only: only read
        height, width = image.shape[:2]
        # A contiguous CHW float, as ToTensor makes: the resize's result depends on the memory
        # layout of its input. copy_ converts while it transposes, with no uint8 CHW copy between.
        chw = torch.empty((3, height, width), dtype=torch.float32, device=self.device)
        return self._transforms.transforms(chw.copy_(pixels.permute(2, 0, 1)).div_(255))

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an ``(H, W, 3)`` uint8 RGB array."""
        return self.encode_batch([image])[0]

    @torch.inference_mode()
    def encode_batch(self, images: list[np.ndarray]) -> list[Embedding]:
        """Run the image encoder once over several images (as ``set_image_batch`` does)."""
        pixels = torch.stack([self.model_input(image) for image in images])
        with self.autocast():
            backbone_out = self.model.forward_image(pixels)
            _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
            if self.model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        count = len(images)
        feats = [
            feat.permute(1, 2, 0).view(count, -1, *size)
            for feat, size in zip(vision_feats[::-1], self._feature_sizes[::-1])
        ][::-1]
        if count == 1:
            return [Embedding(feats[-1], tuple(feats[:-1]), images[0].shape[:2])]
        # Copies, not views: an embedding evicted from the cache must free its own memory.
        return [
            Embedding(feats[-1][i : i + 1].clone(), tuple(f[i : i + 1].clone() for f in feats[:-1]), image.shape[:2])
            for i, image in enumerate(images)
        ]

    @torch.inference_mode()
    def decode(self, embedding: Embedding, prompt: Prompt) -> Mask:
        """Predict the mask for ``prompt``; of several candidates, the highest-scoring one."""
        return self.decode_many(embedding, [prompt])[0]

    @torch.inference_mode()
    def decode_many(self, embedding: Embedding, prompts: list[Prompt],
                    mask_inputs: Sequence[torch.Tensor | np.ndarray | None] | None = None) -> list[Mask]:
        """One mask per prompt (one object each), in order, from as few decoder calls as possible.

        ``mask_inputs[i]``, when given, is prompt i's ``mask_input``: ``256×256`` logits in the
        model's input frame, as ``SAM2ImagePredictor.predict`` takes it (a previous mask's
        :attr:`Mask.logits`, or :func:`sam2_api.maskinput.logits` of a mask file).

        Prompts of the same shape (point count, box or not, multimask or not, mask input or not)
        share batched decoder calls of up to :attr:`decoder_batch` (one on a CPU), as ``SAM2ImagePredictor.predict``
        does with batched prompts; the masks are identical to the predictor's for the same batches.
        A batch of one is exactly the single-prompt computation.
        """
        mask_inputs = list(mask_inputs) if mask_inputs is not None else [None] * len(prompts)
        masks: list[Mask | None] = [None] * len(prompts)
        for indices in self.decoder_calls(prompts, mask_inputs):
            for index, mask in zip(indices, self.decode_call(embedding, prompts, mask_inputs, indices)):
                masks[index] = mask
        return masks

    def decoder_calls(self, prompts: list[Prompt], mask_inputs: Sequence[Any]) -> list[list[int]]:
        """The decoder calls :meth:`decode_many` makes, as lists of prompt indices: prompts of the
        same shape together, at most :attr:`decoder_batch` a call (the decoder's activations grow
        with the batch, about 22 MB a prompt, not with the image)."""
        groups: dict[tuple[int, bool, bool, bool], list[int]] = {}
        for index, prompt in enumerate(prompts):
            shape = (len(prompt.points or ()), prompt.box is not None, prompt.wants_multimask,
                     mask_inputs[index] is not None)
            groups.setdefault(shape, []).append(index)
        batch = self.decoder_batch
        return [same_shape[start : start + batch]
                for same_shape in groups.values() for start in range(0, len(same_shape), batch)]

    @torch.inference_mode()
    def decode_call(self, embedding: Embedding, prompts: list[Prompt], mask_inputs: Sequence[Any],
                    indices: list[int]) -> list[Mask]:
        """One of :meth:`decoder_calls`: the masks of ``prompts[i]`` for ``i`` in ``indices``, in order."""
        tensors = [self._prompt_tensors(embedding, prompts[i]) for i in indices]
        coords = torch.cat([c for c, _ in tensors])
        labels = torch.cat([l for _, l in tensors])
        masked = mask_inputs[indices[0]] is not None
        dense = torch.cat([self._mask_tensor(mask_inputs[i]) for i in indices]) if masked else None
        return self._decode_batch(embedding, coords, labels, dense, prompts[indices[0]].wants_multimask,
                                  [bool(prompts[i].candidates) for i in indices])

    def _mask_tensor(self, logits: torch.Tensor | np.ndarray) -> torch.Tensor:
        """A ``256×256`` mask input as the ``1×1×256×256`` float tensor the prompt encoder takes
        (``SAM2ImagePredictor._prep_prompts``' conversion)."""
        side = self.model.sam_prompt_encoder.mask_input_size
        return torch.as_tensor(logits, dtype=torch.float, device=self.device).reshape(1, 1, *side)

    def _decode_batch(
        self, embedding: Embedding, coords: torch.Tensor, labels: torch.Tensor, mask_input: torch.Tensor | None,
        multimask: bool, candidates: list[bool],
    ) -> list[Mask]:
        """``coords`` ``B×N×2`` in the model's input frame, ``labels`` ``B×N``, ``mask_input``
        ``B×1×256×256`` or None; the best mask of each row, with the others where ``candidates[row]``."""
        with self.autocast():
            sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_input)
            low_res, iou = self.model.sam_mask_decoder(
                image_embeddings=embedding.image_embed,
                image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                repeat_image=coords.shape[0] > 1,
                high_res_features=list(embedding.high_res_feats),
            )[:2]
        scores = iou.float().cpu().numpy()

        # One mask at a time: a full-size float copy of every mask at once would cost 4 bytes per
        # pixel per object (gigabytes for many objects on a large image).
        def mask(row: int, choice: int) -> Mask:
            return Mask(self._full_size_bits(low_res[row, choice], embedding.orig_hw), float(scores[row, choice]),
                        embedding.orig_hw, low_res[row, choice].float().clamp(-LOGIT_BOUND, LOGIT_BOUND))

        masks = []
        for row, wanted in enumerate(candidates):
            # Stable: of equal scores the first wins, as argmax picks it.
            order = np.argsort(-scores[row], kind="stable") if wanted else [scores[row].argmax()]
            best, *others = (mask(row, int(choice)) for choice in order)
            masks.append(Mask(best.bits, best.score, best.hw, best.logits, tuple(others)))
        return masks

    def _full_size_bits(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> bytes:
        """A ``256×256`` logit map → the bit-packed ``orig_hw`` mask, exactly as
        ``SAM2Transforms.postprocess_masks`` upsamples it, thresholded on the device."""
        logits = F.interpolate(low_res[None, None].float(), orig_hw, mode="bilinear", align_corners=False)
        return self.pack(logits[0, 0] > MASK_THRESHOLD)

    def pack(self, mask: torch.Tensor) -> bytes:
        """An ``(H, W)`` bool mask on the device → :func:`sam2_api.imaging.pack_mask`'s bytes."""
        if self.device.type == "cpu":
            return pack_mask(mask.numpy())
        # pack_mask's layout, computed where the mask is: only H·W/8 bytes cross to the host.
        rows = F.pad(mask.to(torch.uint8), (0, (-mask.shape[1]) % 8))
        packed = (rows.view(rows.shape[0], -1, 8) * self._bit_weights).sum(dim=2, dtype=torch.uint8)
        return packed.cpu().numpy().tobytes()

    def segment(self, image: np.ndarray, prompt: Prompt) -> Mask:
        return self.decode(self.encode(image), prompt)

    def warm_up(self) -> None:
        """One small encode + decode of each prompt shape the API sees most, so that lazy
        initialisation (kernels, allocator, autotuning) is not paid by a caller."""
        embedding = self.encode(np.zeros((64, 64, 3), dtype=np.uint8))
        for prompt in (Prompt(points=[[32.0, 32.0]]), Prompt(box=[8.0, 8.0, 40.0, 40.0]),
                       Prompt(points=[[32.0, 32.0], [8.0, 8.0]], labels=[1, 0])):
            mask = self.decode(embedding, prompt)
        self.decode_many(embedding, [Prompt(points=[[32.0, 32.0], [8.0, 8.0]])], [mask.logits])  # a refining click

    def _prompt_tensors(self, embedding: Embedding, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """Box corners (labels 2, 3) then points, in the model's 1024-pixel input frame."""
        coords, labels = [], []
        box = prompt.box_array()
        if box is not None:
            box_tensor = torch.as_tensor(box, dtype=torch.float, device=self.device)
            coords.append(
                self._transforms.transform_boxes(box_tensor, normalize=True, orig_hw=embedding.orig_hw)
            )
            labels.append(torch.tensor([[2, 3]], dtype=torch.int, device=self.device))
        points, point_labels = prompt.point_arrays()
        if points is not None:
            point_tensor = torch.as_tensor(points, dtype=torch.float, device=self.device)
            coords.append(
                self._transforms.transform_coords(
                    point_tensor, normalize=True, orig_hw=embedding.orig_hw
                )[None, ...]
            )
            labels.append(torch.as_tensor(point_labels, dtype=torch.int, device=self.device)[None, ...])
        return torch.cat(coords, dim=1), torch.cat(labels, dim=1)
