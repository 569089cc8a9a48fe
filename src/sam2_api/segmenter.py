"""SAM 2's image encoder and mask decoder, with per-image state kept in values.

``SAM2ImagePredictor`` keeps the current image's features on the object between ``set_image`` and
``predict``, so two threads sharing it can mix their images. :class:`Segmenter` runs the same
computation, step for step, but returns the features as an :class:`Embedding` value that the
caller passes back in; the masks are pixel-identical to the predictor's (tests assert it).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from sam2.utils.transforms import SAM2Transforms

from .prompts import Prompt

MASK_THRESHOLD = 0.0  # logits above this are object, as in SAM2ImagePredictor


@dataclass(frozen=True)
class Embedding:
    """One image's encoder output.

    ``image_embed`` is ``1×256×(S/16)×(S/16)`` and ``high_res_feats`` the two finer levels, where S
    is the model's input size (1024); ``orig_hw`` is the upright image's ``(H, W)`` in pixels.
    """

    image_embed: torch.Tensor
    high_res_feats: tuple[torch.Tensor, ...]
    orig_hw: tuple[int, int]


@dataclass(frozen=True)
class Mask:
    """The chosen mask at the image's size (``(H, W)`` bool, True = object) and its predicted IoU."""

    pixels: np.ndarray
    score: float


class Segmenter:
    """Encoder + decoder over one shared SAM 2 model; safe to call from many threads.

    The model's work is serialized by a lock (one GPU stream, or all CPU cores, at a time); the
    final upsampling of the one returned mask runs outside it.
    """

    def __init__(self, model: SAM2Base) -> None:
        self.model = model
        self.device = model.device
        self._transforms = SAM2Transforms(
            resolution=model.image_size, mask_threshold=MASK_THRESHOLD
        )
        size = model.image_size
        self._feature_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._lock = threading.Lock()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Embedding:
        """Run the image encoder on an ``(H, W, 3)`` uint8 RGB array."""
        pixels = self._transforms(image)[None, ...].to(self.device)
        with self._lock, self._autocast():
            backbone_out = self.model.forward_image(pixels)
            _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
            if self.model.directly_add_no_mem_embed:
                vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).view(1, -1, *size)
            for feat, size in zip(vision_feats[::-1], self._feature_sizes[::-1])
        ][::-1]
        return Embedding(
            image_embed=feats[-1], high_res_feats=tuple(feats[:-1]), orig_hw=image.shape[:2]
        )

    @torch.inference_mode()
    def decode(self, embedding: Embedding, prompt: Prompt) -> Mask:
        """Predict the mask for ``prompt``; of several candidates, the highest-scoring one."""
        coords, labels = self._prompt_tensors(embedding, prompt)
        with self._lock, self._autocast():
            sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            low_res, iou = self.model.sam_mask_decoder(
                image_embeddings=embedding.image_embed,
                image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=prompt.wants_multimask,
                repeat_image=False,
                high_res_features=list(embedding.high_res_feats),
            )[:2]
        scores = iou[0].float().cpu().numpy()
        best = int(np.argmax(scores))
        # Only the returned mask is upsampled, exactly as SAM2Transforms.postprocess_masks does.
        logits = F.interpolate(
            low_res[:, best : best + 1].float(), embedding.orig_hw, mode="bilinear", align_corners=False
        )
        return Mask(pixels=(logits[0, 0] > MASK_THRESHOLD).cpu().numpy(), score=float(scores[best]))

    def segment(self, image: np.ndarray, prompt: Prompt) -> Mask:
        return self.decode(self.encode(image), prompt)

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

    def warm_up(self) -> None:
        """One small encode + decode, so that lazy initialisation is not paid by a caller."""
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        self.segment(image, Prompt(points=[(32.0, 32.0)]))
