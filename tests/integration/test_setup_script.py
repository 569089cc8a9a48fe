"""scripts/setup.sh as a new user sees it: it says which step it is on while pip works quietly.

It runs in a copy of the project's layout whose .venv/bin/python only records what it was asked
to do: the real one would reinstall into the shared .venv (and a real first run downloads 6 GB).
"""

from __future__ import annotations

import re
import shutil
import subprocess

from tests.conftest import REPO


def test_setup_names_each_step_and_its_time_then_installs_the_lock_in_order(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(REPO / "requirements.lock", tmp_path / "requirements.lock")
    (tmp_path / "tests" / "clients").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "clients" / "requirements.lock", tmp_path / "tests" / "clients" / "requirements.lock")
    for venv, record in ((".venv", "pip-calls.txt"), (".venv-clients", "clients-pip-calls.txt")):
        python = tmp_path / venv / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(f'#!/bin/sh\necho "$*" >> {record}\n')
        python.chmod(0o755)

    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == ""
    *steps, last = result.stderr.splitlines()
    assert [re.sub(r" \(\d+ s so far\)$", "", line) for line in steps] == [
        "setup: [1/6] torch and torchvision, with CUDA's libraries (the first time: about 5 GB, most of the wait)",
        "setup: [2/6] setuptools and wheel, to build sam2",
        "setup: [3/6] sam2, built against that torch",
        "setup: [4/6] everything else in requirements.lock",
        "setup: [5/6] this project (sam2_api and the sam2-api command), editable, with its server and dev extras",
        "setup: [6/6] the third-party clients the compatibility tests drive, in .venv-clients (the first time: "
        "about 1 GB, 1 min)",
    ]
    assert re.fullmatch(r"setup: \.venv ready in \d+ s", last)
    pins = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    calls = [line.removeprefix("-m pip --disable-pip-version-check -q install ")
             for line in (tmp_path / "pip-calls.txt").read_text().splitlines()]
    assert calls == [f"torch=={pins['torch']} torchvision=={pins['torchvision']}", "setuptools>=68 wheel",
                     f"--no-build-isolation sam2=={pins['sam2']}", "-r requirements.lock", "--no-deps -e .[server,dev]"]
    # The clients' own venv gets their lock, and nothing of the service's.
    assert (tmp_path / "clients-pip-calls.txt").read_text().splitlines() == [
        "-m pip --disable-pip-version-check -q install -r tests/clients/requirements.lock"]
