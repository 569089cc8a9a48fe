"""Where one server keeps what it writes while it runs: BentoML's task store, the track board beside
it (``api/task_board.py``) and Prometheus' per-process files.

BentoML keeps the first and the last under ``BENTOML_HOME`` and wipes both at every start, so a
second server on the same host (another port, the test suite, a Bento beside ``serve.sh``) would
turn the first one's running tasks into 404s and zero its ``/metrics``. Each server gets a folder of
its own instead: ``SAM2_STATE_DIR`` when set (one folder per server: never give two the same), else
a fresh temporary folder made by the serving process when it loads ``service.py``, handed to its
workers through the environment they inherit, and removed when it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

STATE_DIR_ENV = "SAM2_STATE_DIR"


def use_own_state_dir(configured: Path | None) -> Path:
    """This server's state folder (``configured``, or a new one), with BentoML pointed at it."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    if configured is None:  # the serving process: its workers find the folder in the environment
        configured = Path(tempfile.mkdtemp(prefix="sam2-server-"))
        os.environ[STATE_DIR_ENV] = str(configured)  # written, not read: config.py reads the environment
        atexit.register(shutil.rmtree, configured, ignore_errors=True)
    configured.mkdir(parents=True, exist_ok=True)
    BentoMLContainer.result_store_file.set(str(configured / "task_result.db"))
    BentoMLContainer.prometheus_multiproc_dir.set(str(configured / "prometheus"))
    return configured
