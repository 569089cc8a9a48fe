"""README.md stays what a user needs first (at most 300 lines; the rest is in docs/), and every
relative link in it and in docs/ leads somewhere: the file exists, and a `#anchor` names one of
that page's headings as GitHub makes them."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 300

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    lines, inside = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text of links and code kept, lower case, punctuation
    other than `-` and `_` dropped, each space a `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """Each relative link of `page` that leads nowhere, as `page:line: target (why)`."""
    broken = []
    for number, line in _prose(page.read_text()):
        for target in LINK.findall(CODE_SPAN.sub("code", line)):
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:, …
                continue
            name, _, anchor = target.partition("#")
            destination = (page.parent / name).resolve() if name else page
            where = f"{page.relative_to(root)}:{number}: {target}"
            if not destination.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text()):
                broken.append(f"{where} (no such heading)")
    return broken


def test_readme_is_at_most_300_lines():
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move details to docs/ (issue 18)"


def test_every_relative_link_in_readme_and_docs_resolves():
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    assert len(pages) > 10
    broken = [entry for page in pages for entry in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_the_checker_finds_a_missing_file_a_missing_heading_and_skips_code(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "API.md").write_text("# The API\n## `POST /segment` (multipart/form-data)\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Use it from…\n"
        "[ok](docs/API.md#post-segment-multipartform-data) [ok](#use-it-from) [web](https://example.com/x)\n"
        "[gone](docs/NOPE.md) [no heading](docs/API.md#post-segment)\n"
        "```\n[in a fence](docs/NOPE.md)\n# not a heading\n```\n"
        "`[in code](docs/NOPE.md)` [not a heading](#not-a-heading)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "README.md:3: docs/NOPE.md (no such file)",
        "README.md:3: docs/API.md#post-segment (no such heading)",
        "README.md:8: #not-a-heading (no such heading)",
    ]


def test_slug_follows_githubs_rules():
    assert slug("Video: the `track` task — objects tracked through a clip") == (
        "video-the-track-task--objects-tracked-through-a-clip")
    assert slug("`POST /sam2/embed_image`, `POST /sam2/segment_image` (JSON): Roboflow's SAM 2 routes") == (
        "post-sam2embed_image-post-sam2segment_image-json-roboflows-sam-2-routes")
    assert anchors("# Steps\n## Steps\n") == {"steps", "steps-1"}
