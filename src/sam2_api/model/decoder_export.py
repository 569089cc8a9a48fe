"""SAM 2's prompt encoder + mask decoder as one ONNX model, for browsers (``GET /decoder.onnx``).

The graph takes what ``POST /embed`` returns and a prompt, with the input and output names of
onnxruntime's own SAM 2 exporter (``onnxruntime/python/tools/transformers/models/sam2/
image_decoder.py``), whose approach it follows: the prompt encoder written as plain tensor ops
(the mask input blended by ``has_input_masks``), the legacy TorchScript exporter, opset 17.

Two differences from that exporter, both so that the browser computes exactly what ``/segment``
does: ``point_coords`` are pixels of the upright image (as ``/segment``'s ``points``), scaled to
the model's 1024-pixel frame inside the graph as ``SAM2Transforms.transform_coords`` does; and
``masks`` holds four logit maps at the original size: first the mask ``/segment`` returns without
multimask output (SAM 2's dynamic fall-back to the most confident candidate when the single mask is
unstable), then the three multimask candidates. ``iou_predictions`` and ``low_res_masks`` (clamped
to ±32, what ``/segment`` keeps for refinement) follow the same order.

The model is exported from copies of the very modules the service loaded, in a thread of its own
(the device thread keeps serving), checked against torch on a fixed prompt (logged), and kept on
disk under the SHA-256 of the checkpoint file, so that a restart with the same weights reads it back.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base
from torch import nn

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("image_embeddings", "image_features_0", "image_features_1", "point_coords", "point_labels",
               "input_masks", "has_input_masks", "original_image_size")
OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")
LOGIT_BOUND = 32.0  # as sam2_api.model.segmenter: the low-res logits kept for refinement
# The parity check's bound on mask pixels that differ between onnxruntime and torch (rounding only).
PARITY_MAX_DIFFERING = 0.001
EXPORTER_VERSION = "1"  # part of the cache key: a change to this module's graph makes a new file


class PromptDecoder(nn.Module):
    """Prompt encoder + mask decoder of ``model`` over one image's embedding, as one module."""

    def __init__(self, model: SAM2Base) -> None:
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.image_size = float(model.image_size)

    @torch.no_grad()
    def forward(self, image_embeddings: torch.Tensor, image_features_0: torch.Tensor,
                image_features_1: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                input_masks: torch.Tensor, has_input_masks: torch.Tensor,
                original_image_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = original_image_size[0], original_image_size[1]
        # SAM2Transforms.transform_coords(normalize=True): divided by the image's size, times 1024
        scale = torch.stack([width, height]).to(torch.float32)
        coords = point_coords / scale * self.image_size
        sparse = self.prompt_encoder._embed_points(coords, point_labels, pad=True)
        encoder = self.prompt_encoder
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_input_masks * encoder.mask_downscaling(input_masks) + (1.0 - has_input_masks) * no_mask
        low_res, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings, image_pe=encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=False, high_res_features=[image_features_0, image_features_1],
        )
        single, single_iou = self.mask_decoder._dynamic_multimask_via_stability(low_res, iou)
        low_res = torch.cat([single, low_res[:, 1:]], dim=1)
        iou = torch.cat([single_iou, iou[:, 1:]], dim=1)
        masks = F.interpolate(low_res, (height, width), mode="bilinear", align_corners=False)
        return masks, iou, torch.clamp(low_res, -LOGIT_BOUND, LOGIT_BOUND)


def example_inputs(model: SAM2Base, height: int = 480, width: int = 640, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed prompt over a random embedding of the model's shapes: two clicks, a box and a mask input."""
    rng = np.random.default_rng(seed)
    size = model.image_size
    return {
        "image_embeddings": rng.standard_normal((1, 256, size // 16, size // 16), dtype=np.float32),
        "image_features_0": rng.standard_normal((1, 32, size // 4, size // 4), dtype=np.float32),
        "image_features_1": rng.standard_normal((1, 64, size // 8, size // 8), dtype=np.float32),
        "point_coords": np.array([[[40, 30], [600, 450], [200, 160], [320, 240]]], dtype=np.float32),
        "point_labels": np.array([[2, 3, 1, 0]], dtype=np.int32),
        "input_masks": rng.standard_normal((1, 1, 256, 256), dtype=np.float32) * 4,
        "has_input_masks": np.array([1.0], dtype=np.float32),
        "original_image_size": np.array([height, width], dtype=np.int32),
    }


def export(model: SAM2Base) -> bytes:
    """The ONNX model's bytes, traced on CPU copies of ``model``'s prompt encoder and mask decoder."""
    decoder = PromptDecoder(_cpu_copy(model)).eval()
    inputs = tuple(torch.from_numpy(array) for array in example_inputs(model).values())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about shapes read as Python values
        torch.onnx.export(
            decoder, inputs, buffer, export_params=True, opset_version=OPSET, do_constant_folding=True,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamo=False,
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"},
                          "masks": {2: "original_image_height", 3: "original_image_width"}},
        )
    return buffer.getvalue()


@dataclass(frozen=True)
class Parity:
    """onnxruntime against torch on :func:`example_inputs`."""

    max_logit_diff: float
    differing_pixels: float  # the share of ``masks`` pixels on different sides of 0
    max_iou_diff: float

    @property
    def ok(self) -> bool:
        return self.differing_pixels <= PARITY_MAX_DIFFERING and self.max_iou_diff < 1e-3


def check_parity(model: SAM2Base, onnx_bytes: bytes) -> Parity:
    import onnxruntime

    decoder = PromptDecoder(_cpu_copy(model)).eval()
    inputs = example_inputs(model)
    expected = [t.numpy() for t in decoder(*(torch.from_numpy(a) for a in inputs.values()))]
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), inputs)
    return Parity(max_logit_diff=float(np.abs(got[0] - expected[0]).max()),
                  differing_pixels=float(((got[0] > 0) != (expected[0] > 0)).mean()),
                  max_iou_diff=float(np.abs(got[1] - expected[1]).max()))


def _cpu_copy(model: SAM2Base) -> SAM2Base:
    """A model-like holder of float32 CPU copies of the two small modules (a few MB): the export
    never touches the modules the device thread is using."""
    holder = nn.Module()
    holder.sam_prompt_encoder = copy.deepcopy(model.sam_prompt_encoder).float().cpu().eval()
    holder.sam_mask_decoder = copy.deepcopy(model.sam_mask_decoder).float().cpu().eval()
    holder.image_size = model.image_size
    return holder  # type: ignore[return-value]


def default_cache_dir() -> Path:
    """Where exported decoders are kept: ``$XDG_CACHE_HOME/sam2-api/onnx`` (``~/.cache`` without it)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sam2-api" / "onnx"


def weights_digest(checkpoint: Path) -> str:
    """SHA-256 of the checkpoint file, read in blocks."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DecoderModels:
    """The ONNX decoder of each loaded model, by name: exported once (in a thread of its own,
    started by :meth:`start`), kept on disk under the weights' digest, and its bytes on request."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._ready: dict[str, threading.Event] = {}
        self._bytes: dict[str, bytes] = {}
        self._failed: dict[str, str] = {}

    def start(self, name: str, model: SAM2Base, checkpoint: Path, packaged: Path | None = None) -> None:
        """Begin exporting ``name``'s decoder (or reading it from the disk cache) in the background;
        ``packaged``: the file the Bento carries for these weights (:func:`write_decoder`), read instead."""
        if name in self._ready:
            return
        self._ready[name] = threading.Event()
        threading.Thread(target=self._prepare, args=(name, model, checkpoint, packaged), name=f"onnx-export-{name}",
                         daemon=True).start()

    def get(self, name: str, timeout_s: float) -> bytes | None:
        """The ONNX bytes of ``name``'s decoder, waiting up to ``timeout_s`` for its export; None
        when it is not ready by then. RuntimeError if the export failed."""
        ready = self._ready.get(name)
        if ready is None:
            raise KeyError(name)
        if not ready.wait(timeout_s):
            return None
        if name in self._failed:
            raise RuntimeError(self._failed[name])
        return self._bytes[name]

    def _prepare(self, name: str, model: SAM2Base, checkpoint: Path, packaged: Path | None) -> None:
        try:
            if packaged is not None:
                self._bytes[name] = packaged.read_bytes()
                log.info("ONNX decoder of %s read from the Bento's model (%s, %d bytes)", name, packaged,
                         len(self._bytes[name]))
                return
            self._bytes[name] = self._load_or_export(name, model, checkpoint)
        except Exception as exc:  # a failed export must not stop the service: /decoder.onnx says so
            log.exception("could not export the ONNX decoder of %s", name)
            self._failed[name] = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready[name].set()

    def _load_or_export(self, name: str, model: SAM2Base, checkpoint: Path) -> bytes:
        digest = weights_digest(checkpoint)
        path = self.cache_dir / f"decoder-{digest[:32]}-v{EXPORTER_VERSION}-opset{OPSET}.onnx"
        if path.is_file():
            log.info("ONNX decoder of %s read from %s (%d bytes)", name, path, path.stat().st_size)
            return path.read_bytes()
        onnx_bytes = checked_export(model, name)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{threading.get_ident()}.part")
        partial.write_bytes(onnx_bytes)
        partial.replace(path)  # atomic: a concurrent reader sees the whole file or none
        return onnx_bytes


def checked_export(model: SAM2Base, name: str) -> bytes:
    """:func:`export`, then :func:`check_parity`, logged; RuntimeError when the check fails."""
    with torch.inference_mode(False):
        onnx_bytes = export(model)
        parity = check_parity(model, onnx_bytes)
    log.info("ONNX decoder of %s exported (%d bytes); onnxruntime vs torch on a fixed prompt: max logit "
             "difference %.2e, %.4f %% of mask pixels differ, max IoU difference %.2e: %s", name,
             len(onnx_bytes), parity.max_logit_diff, parity.differing_pixels * 100, parity.max_iou_diff,
             "ok" if parity.ok else "FAILED")
    if not parity.ok:
        raise RuntimeError("the exported decoder does not match torch on the parity check")
    return onnx_bytes


def write_decoder(model: SAM2Base, path: Path) -> None:
    """The checked export of ``model``'s decoder written to ``path`` (at ``scripts/import_model.py``:
    the Bento then carries it beside the checkpoint)."""
    path.write_bytes(checked_export(model, path.name))


def embedding_arrays(embed: torch.Tensor, high_res: tuple[torch.Tensor, ...], dtype: str) -> dict[str, np.ndarray]:
    """One image's cached embedding as the decoder's three image inputs, in ``dtype``."""
    tensors = {"image_embeddings": embed, "image_features_0": high_res[0], "image_features_1": high_res[1]}
    return {name: tensor.detach().float().cpu().numpy().astype(dtype, copy=False) for name, tensor in tensors.items()}
