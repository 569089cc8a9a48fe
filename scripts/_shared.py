"""What the scripts share. Importing it puts the repository's root on ``sys.path``, so that a script
run as ``.venv/bin/python scripts/x.py`` (``sys.path[0]`` is ``scripts/``) can import ``tests.support``
and ``tests.clips``; and it holds the helpers the benchmarks used to copy: image variants, the
Server-Timing header, the hardware label."""

from __future__ import annotations

import io
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def png_variants(base, count: int, seed: int) -> list[bytes]:
    """``count`` PNGs of ``base`` (an ``(H, W, 3)`` uint8 array), each with one pixel changed:
    distinct bytes for the cache, the same work."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        pixels = base.copy()
        pixels[rng.integers(base.shape[0]), rng.integers(base.shape[1]), 0] ^= 1
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
        out.append(buffer.getvalue())
    return out


def server_timing(header: str) -> dict[str, float]:
    """A ``Server-Timing`` header (``name;dur=ms, …``), in seconds per stage."""
    stages = {}
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            stages[name] = float(duration) / 1000
    return stages


def processor() -> str:
    """The CPU's name as Python sees it (the machine type where it has none)."""
    return platform.processor() or platform.machine()


def device_label(device) -> tuple[str, str]:
    """(file name, description) of the machine the figures come from, for a ``torch.device``."""
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        return "gpu-" + name.lower().replace("nvidia ", "").replace(" ", "-"), name
    import psutil

    return "cpu", f"CPU, {psutil.cpu_count()} cores ({processor()})"
