"""Resolving SAM 2 weights and building the model on the right device.

Two sources, one path: a Hugging Face id (``SAM2_MODEL``) is resolved to sam2's config and a
downloaded checkpoint; a local file (``SAM2_CHECKPOINT``) is used as it is. Both end in sam2's own
``build_sam2``, so a user's checkpoint and the tests' random-init one load the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, build_sam2
from sam2.modeling.sam2_base import SAM2Base

from .config import Settings
from .errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from: a sam2 config name and a checkpoint file on disk."""

    config: str
    checkpoint: Path
    origin: str  # the Hugging Face id or "local", for logs and labels


BENTO_CHECKPOINT_FILE = "checkpoint.pt"  # inside a BentoML model's directory


def resolve_weights(settings: Settings, packaged: WeightsSource | None = None) -> WeightsSource:
    """Find config and checkpoint: ``SAM2_CHECKPOINT`` first, then the weights packaged in the
    Bento, then ``SAM2_MODEL`` downloaded from Hugging Face."""
    default_config, checkpoint_name = HF_MODEL_ID_TO_FILENAMES[settings.sam2_model]
    if settings.sam2_checkpoint is not None:
        return WeightsSource(
            config=settings.sam2_config or default_config,
            checkpoint=settings.sam2_checkpoint,
            origin="local",
        )
    if packaged is not None:
        return packaged
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id=settings.sam2_model, filename=checkpoint_name)
    except Exception as exc:  # offline, hub down, gated, disk full: all end the same way
        raise ModelLoadError(
            f"could not fetch {settings.sam2_model} from Hugging Face "
            f"({type(exc).__name__}); set SAM2_CHECKPOINT to a local checkpoint file"
        ) from exc
    return WeightsSource(config=default_config, checkpoint=Path(path), origin=settings.sam2_model)


def packaged_weights(stored_model) -> WeightsSource:
    """The weights of a BentoML model written by ``scripts/import_model.py``."""
    return WeightsSource(
        config=stored_model.info.metadata["config"],
        checkpoint=Path(stored_model.path_of(BENTO_CHECKPOINT_FILE)),
        origin=f"bento model {stored_model.tag} ({stored_model.info.labels.get('source', '?')})",
    )


def pick_device(preference: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a startup error."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise ModelLoadError("SAM2_DEVICE=cuda but no CUDA device is available")
    return torch.device("cpu")


def load_sam2(source: WeightsSource, device: torch.device, compile_encoder: bool = False) -> SAM2Base:
    """Build SAM 2 from ``source`` in eval mode on ``device`` (sam2's defaults, as Meta ships).

    On CUDA, TF32 matmuls are allowed (the model also runs under bf16 autocast there, see
    ``Segmenter``) and the image encoder can be compiled with ``torch.compile``.
    """
    try:
        model = build_sam2(source.config, str(source.checkpoint), device=str(device))
    except Exception as exc:
        raise ModelLoadError(
            f"could not load SAM 2 from {source.checkpoint} with config {source.config}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if compile_encoder:
        # As sam2's own VOS predictor does: fixed input size, so one static graph.
        model.image_encoder.forward = torch.compile(
            model.image_encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
        )
    log.info("loaded SAM 2 (%s, %s) on %s%s", source.origin, source.config, device,
             ", encoder compiled" if compile_encoder else "")
    return model
