"""Resolving and loading weights: local files as given, clear failures otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sam2_api.config import Settings
from sam2_api.errors import ModelLoadError
from sam2_api.model.weights import load_sam2, pick_device, resolve_weights
from tests.conftest import REPO


def test_local_checkpoint_takes_the_config_of_its_variant(checkpoint):
    source = resolve_weights(Settings(sam2_checkpoint=checkpoint))
    assert (source.config, source.checkpoint, source.origin) == (
        "configs/sam2.1/sam2.1_hiera_t.yaml", checkpoint, "local"
    )
    large = resolve_weights(Settings(sam2_checkpoint=checkpoint, sam2_model="facebook/sam2.1-hiera-large"))
    assert large.config == "configs/sam2.1/sam2.1_hiera_l.yaml"
    custom = resolve_weights(Settings(sam2_checkpoint=checkpoint, sam2_config="configs/sam2/sam2_hiera_t.yaml"))
    assert custom.config == "configs/sam2/sam2_hiera_t.yaml"


def test_local_checkpoint_loads_on_cpu_in_eval_mode(checkpoint):
    model = load_sam2(resolve_weights(Settings(sam2_checkpoint=checkpoint)), torch.device("cpu"))
    assert model.device.type == "cpu" and not model.training
    assert model.image_size == 1024


def test_wrong_file_fails_with_a_clear_message(tmp_path):
    bogus = tmp_path / "not-weights.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match=f"could not load SAM 2 from {bogus}"):
        load_sam2(resolve_weights(Settings(sam2_checkpoint=bogus)), torch.device("cpu"))


def test_weights_that_cannot_be_downloaded_say_to_set_sam2_checkpoint(tmp_path):
    # huggingface_hub reads its offline switch at import, so ask in a fresh interpreter.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    env.pop("SAM2_CHECKPOINT", None)
    code = (
        "from sam2_api.config import Settings\n"
        "from sam2_api.model.weights import resolve_weights\n"
        "resolve_weights(Settings())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert (
        "ModelLoadError: could not fetch facebook/sam2.1-hiera-tiny from Hugging Face "
        "(LocalEntryNotFoundError); set SAM2_CHECKPOINT to a local checkpoint file"
    ) in result.stderr


def test_import_model_offline_says_to_pass_its_checkpoint_option(tmp_path):
    """scripts/import_model.py reads no SAM2_CHECKPOINT: its way to a local file is --checkpoint."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "BENTOML_HOME": str(tmp_path / "bentoml")}
    result = subprocess.run([sys.executable, "scripts/import_model.py"], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stderr.splitlines()) == (1, [
        "error: could not fetch facebook/sam2.1-hiera-tiny from Hugging Face (LocalEntryNotFoundError); "
        "give a local file with --checkpoint FILE.pt"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU paths")
def test_device_policy_without_a_gpu():
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="SAM2_DEVICE=cuda but no CUDA device"):
        pick_device("cuda")


def test_random_test_weights_are_marked_and_announced(checkpoint, tmp_path, caplog):
    import logging

    from sam2_api.model.weights import is_random_test_checkpoint

    assert is_random_test_checkpoint(checkpoint)
    real_format = tmp_path / "meta-format.pt"
    torch.save({"model": {}}, real_format)  # what Meta's release files hold: no mark
    assert not is_random_test_checkpoint(real_format)
    assert not is_random_test_checkpoint(tmp_path / "missing.pt")
    with caplog.at_level(logging.WARNING, logger="sam2_api.model.weights"):
        load_sam2(resolve_weights(Settings(sam2_checkpoint=checkpoint)), torch.device("cpu"))
    assert f"{checkpoint} holds RANDOM TEST WEIGHTS" in caplog.text


def test_an_unreachable_hub_fails_at_once_with_one_line(tmp_path):
    """Not offline mode, but nothing answers: one look, one line, no five retries with backoff."""
    import time

    from tests.support.localdev import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("SAM2_CHECKPOINT", None)
    code = "from sam2_api.model.weights import hugging_face_checkpoint\nhugging_face_checkpoint('facebook/sam2.1-hiera-tiny')\n"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert time.monotonic() - started < 20  # the interpreter and torch's import, not 25 s of retries
    assert (f"could not fetch facebook/sam2.1-hiera-tiny from Hugging Face ({endpoint} unreachable: "
            "ConnectError); set SAM2_CHECKPOINT to a local checkpoint file") in result.stderr
    assert "Retrying" not in result.stderr


def test_the_api_service_process_never_imports_torch():
    """service.py is imported by every process of both services; torch belongs to the model's only."""
    code = "import sys, service\nassert 'torch' not in sys.modules, 'torch imported'\nprint('ok')"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM2_")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_an_nvidia_driver_too_old_for_torchs_cuda_is_named_in_one_line(tmp_path):
    from sam2_api.model.weights import driver_problem, nvidia_driver_version

    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.133.20  Fri Feb 28 12:00:00 UTC 2025\n"
                    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    assert nvidia_driver_version(proc) == (570, 133, 20)
    assert nvidia_driver_version(tmp_path / "absent") is None  # no NVIDIA driver: nothing to check
    problem = driver_problem((570, 133, 20), "13.0")
    assert problem.startswith("the NVIDIA driver here is 570.133.20, but this image's torch ")
    assert "built for CUDA 13.0, which needs driver 580.65.6 or newer (R580+)" in problem
    assert "\n" not in problem
    assert driver_problem((580, 95, 5), "13.0") is None
    assert driver_problem((570, 133, 20), "12.8") is None  # CUDA 12 wheels run on R525+
    assert driver_problem(None, "13.0") is None and driver_problem((470, 1), None) is None
