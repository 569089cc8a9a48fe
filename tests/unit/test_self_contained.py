"""A clone in an empty folder must pass: nothing here may reach outside the checkout."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"\.\./shared|REPO\.parent\b")


def test_no_test_or_script_reads_from_beside_the_checkout():
    tracked = subprocess.run(["git", "ls-files", "tests", "scripts", "src", ".ci", "service.py"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    assert "tests/conftest.py" in tracked
    offenders = []
    for name in tracked:
        path = REPO / name
        if path.suffix in (".py", ".sh", ".js", "") and path != Path(__file__):
            text = path.read_text(errors="replace")
            offenders += [f"{name}: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not offenders, offenders


def test_the_test_images_and_their_licences_are_in_the_repository():
    data = REPO / "tests" / "data"
    images = sorted(p.name for p in data.iterdir() if p.suffix in (".png", ".jpg"))
    assert images == ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    licences = (data / "README.md").read_text()
    assert all(name in licences for name in images)
