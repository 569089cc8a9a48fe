"""SAM 2 weights: where they come from, how they are stored in a Bento, and the model on a device.

Three sources, one path: a local file (``SAM2_CHECKPOINT``) used as it is; weights packaged in the
Bento (the BentoML model store, written by :func:`store_weights`); or a Hugging Face id
(``SAM2_MODEL``) resolved to sam2's config and a downloaded checkpoint. All end in sam2's own
``build_sam2``, so a user's checkpoint and the tests' random-init one load the same way.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, build_sam2
from sam2.modeling.sam2_base import SAM2Base

from ..config import Settings
from ..errors import ModelLoadError

log = logging.getLogger(__name__)

# scripts/make_test_checkpoint.py writes this key beside Meta's "model" key (build_sam2 reads only
# "model"), so that random weights can never pass for a model unnoticed.
RANDOM_WEIGHTS_MARK = "sam2_api_random_test_weights"
RANDOM_WEIGHTS_LABEL = "random-test-weights"

# The BentoML model-store format of our weights (store_weights writes it, packaged_weights reads
# it): the checkpoint file as Meta ships it, the sam2 config in the metadata, and labels that say
# which variant it is and where it came from.
BENTO_CHECKPOINT_FILE = "checkpoint.pt"
BENTO_DECODER_FILE = "decoder.onnx"  # the browser's ONNX decoder of these weights (decoder_export), made at import


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from: a sam2 config name and a checkpoint file on disk."""

    config: str
    checkpoint: Path
    origin: str  # the Hugging Face id, "local" or the Bento model, for logs and labels
    decoder: Path | None = None  # the browser's ONNX decoder exported from these weights, when packaged with them


def resolve_weights(settings: Settings, packaged: WeightsSource | None = None, download: bool = True,
                    model: str | None = None) -> WeightsSource:
    """Find config and checkpoint of size ``model`` (default ``SAM2_MODEL``): a local file first
    (``SAM2_CHECKPOINT`` for ``SAM2_MODEL``, ``SAM2_CHECKPOINTS``), then the weights packaged in the
    Bento, then Hugging Face (from its local cache only unless ``download``: the server downloads
    once, before its workers start, and workers read the cache)."""
    model = model or settings.sam2_model
    default_config, _ = HF_MODEL_ID_TO_FILENAMES[model]
    local = settings.checkpoints.get(model)
    if local is not None:
        custom = settings.sam2_config if local == settings.sam2_checkpoint and model == settings.sam2_model else None
        return WeightsSource(config=custom or default_config, checkpoint=local, origin="local")
    if packaged is not None:
        return packaged
    return WeightsSource(default_config, hugging_face_checkpoint(model, download), model)


def hugging_face_checkpoint(model_id: str, download: bool = True,
                            remedy: str = "set SAM2_CHECKPOINT to a local checkpoint file") -> Path:
    """The checkpoint file of ``model_id`` in Hugging Face's local cache, downloaded first when
    it is not there and ``download`` allows; :class:`ModelLoadError` in one line otherwise, ending
    with ``remedy``: how the caller's user gives a local file instead."""
    from huggingface_hub import constants, hf_hub_download

    _, filename = HF_MODEL_ID_TO_FILENAMES[model_id]

    def failed(reason: str) -> ModelLoadError:
        return ModelLoadError(f"could not fetch {model_id} from Hugging Face ({reason}); {remedy}")

    try:
        return Path(hf_hub_download(repo_id=model_id, filename=filename, local_files_only=True))
    except Exception as exc:  # not in the local cache (or offline mode): download, if allowed
        if not download or constants.HF_HUB_OFFLINE:
            raise failed(type(exc).__name__) from exc
    # huggingface_hub retries an unreachable hub five times with backoff (about 25 s of
    # warnings); one quick look first turns that into one clear line at once.
    import httpx

    try:
        httpx.head(constants.ENDPOINT, timeout=5)
    except httpx.HTTPError as exc:
        raise failed(f"{constants.ENDPOINT} unreachable: {type(exc).__name__}") from exc
    try:
        return Path(hf_hub_download(repo_id=model_id, filename=filename))
    except Exception as exc:  # hub down, gated, disk full: all end the same way
        raise failed(type(exc).__name__) from exc


def is_random_test_checkpoint(path: Path) -> bool:
    """Whether ``path`` holds the random weights of scripts/make_test_checkpoint.py (read lazily:
    the tensors are memory-mapped, not loaded)."""
    try:
        return bool(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(RANDOM_WEIGHTS_MARK))
    except Exception:  # not a checkpoint torch can map: load_sam2 says what is wrong with it
        return False


def store_weights(model_id: str, checkpoint: Path, name: str, source: str):
    """Put ``checkpoint`` (Meta's format, variant ``model_id``) into the BentoML model store as
    ``name``; returns the stored model (``.tag`` names it for scripts/build_bento.sh)."""
    import bentoml

    config, _ = HF_MODEL_ID_TO_FILENAMES[model_id]
    labels = {"variant": model_id.split("/")[-1], "source": source}
    if is_random_test_checkpoint(checkpoint):
        labels["weights"] = RANDOM_WEIGHTS_LABEL
    with bentoml.models.create(name, labels=labels, metadata={"config": config, "hf_id": model_id}) as model:
        shutil.copyfile(checkpoint, model.path_of(BENTO_CHECKPOINT_FILE))
        # the browser's decoder, exported and checked here, so that the Bento carries it (GET /decoder.onnx)
        from .decoder_export import write_decoder

        write_decoder(load_sam2(WeightsSource(config, checkpoint, source), torch.device("cpu")),
                      Path(model.path_of(BENTO_DECODER_FILE)))
    return model


def packaged_by_size(stored_models) -> dict[str, WeightsSource]:
    """The weights of BentoML models written by :func:`store_weights`, by size id."""
    return {model.info.metadata["hf_id"]: packaged_weights(model) for model in stored_models}


def packaged_weights(stored_model) -> WeightsSource:
    """The weights of a BentoML model written by :func:`store_weights`."""
    decoder = Path(stored_model.path_of(BENTO_DECODER_FILE))
    return WeightsSource(
        config=stored_model.info.metadata["config"],
        checkpoint=Path(stored_model.path_of(BENTO_CHECKPOINT_FILE)),
        origin=f"bento model {stored_model.tag} ({stored_model.info.labels.get('source', '?')})",
        decoder=decoder if decoder.is_file() else None,  # models stored before it was made have none
    )


# The oldest NVIDIA driver (Linux) that runs each CUDA major version torch may be built for
# (NVIDIA's CUDA Toolkit release notes, "minor version compatibility").
MIN_DRIVER = {12: (525, 60, 13), 13: (580, 65, 6)}
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")


def nvidia_driver_version(version_file: Path = DRIVER_VERSION_FILE) -> tuple[int, ...] | None:
    """The host's NVIDIA kernel driver version (e.g. ``(570, 133, 20)``), or None without one."""
    try:
        text = version_file.read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module(?: for \w+)?\s+(\d+(?:\.\d+)+)", text)
    return tuple(int(part) for part in found.group(1).split(".")) if found else None


def driver_problem(driver: tuple[int, ...] | None, cuda: str | None) -> str | None:
    """Why torch's CUDA ``cuda`` (e.g. "13.0") cannot run on ``driver``, in one line; None if it can
    (or when there is no NVIDIA driver, or torch is a CPU build)."""
    if driver is None or cuda is None:
        return None
    needed = MIN_DRIVER.get(int(cuda.split(".")[0]))
    if needed is None or driver >= needed:
        return None
    show = lambda version: ".".join(str(part) for part in version)
    return (f"the NVIDIA driver here is {show(driver)}, but this image's torch {torch.__version__} is built for "
            f"CUDA {cuda}, which needs driver {show(needed)} or newer (R{needed[0]}+): run it on a host with a "
            "newer driver, or set SAM2_DEVICE=cpu")


def pick_device(preference: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a startup error, and so is
    an NVIDIA driver too old for torch's CUDA (with ``auto`` too: a GPU host must not fall back to
    the CPU unnoticed)."""
    if preference == "cpu":
        return torch.device("cpu")
    problem = driver_problem(nvidia_driver_version(), torch.version.cuda)
    if problem is not None:
        raise ModelLoadError(problem)
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
    if is_random_test_checkpoint(source.checkpoint):
        log.warning("%s holds RANDOM TEST WEIGHTS (scripts/make_test_checkpoint.py): its masks are "
                    "meaningless blobs, not segmentations; point SAM2_CHECKPOINT at real weights", source.checkpoint)
    return model
