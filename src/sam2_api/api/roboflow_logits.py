"""Roboflow's logits cache (``save_logits_to_cache`` / ``load_logits_from_cache``) over our own.

Roboflow's server (``inference/models/sam2/segment_anything2.py``) keeps, per ``image_id`` and
prompt set, the low-resolution logits of each prompt's best mask; a later request on the same
image whose prompt set has an earlier one as a *strict subset* (each earlier prompt matched to a
distinct prompt of the new set with the same box and a subset of its points, the two sets not
equal) sends those logits as the decoder's ``mask_input``: the earlier set with one point fewer
than the new one at once, else the one with the most points. Here the logits already stay in the
model service under a ``mask_id`` (our ``previous_mask_id``), so this index keeps only which
``mask_id`` answered which prompt of which set, in a SQLite file that every worker process of the
replica shares; a matched prompt is sent with the ``mask_id`` of the earlier prompt it matched.
An id the model service has since evicted costs nothing but the refinement (the caller asked to
*try* the cache): the request runs again without it.
"""

from __future__ import annotations

import json
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from .sqlite_store import SqliteStore

MAX_ENTRIES = 4096  # prompt sets remembered per replica; each row holds a few ids, not logits
SCANNED = 256  # the most recent sets of one image that a lookup considers

_SCHEMA = """CREATE TABLE IF NOT EXISTS logits (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image TEXT NOT NULL, prompts TEXT NOT NULL, mask_ids TEXT NOT NULL)"""
_INDEX = "CREATE INDEX IF NOT EXISTS logits_image ON logits (image, id)"


@dataclass(frozen=True)
class PromptKey:
    """One Roboflow prompt as the cache compares it: its box ``(x, y, width, height)`` (centre,
    as sent) and its set of points ``(x, y, positive)``."""

    box: tuple[float, float, float, float] | None
    points: frozenset[tuple[float, float, bool]]

    def as_json(self) -> list:
        return [list(self.box) if self.box else None, sorted([list(p) for p in self.points])]

    @classmethod
    def from_json(cls, value: list) -> "PromptKey":
        box, points = value
        return cls(tuple(box) if box else None, frozenset((x, y, bool(positive)) for x, y, positive in points))


def match(earlier: list[PromptKey], now: list[PromptKey]) -> list[int | None] | None:
    """For each prompt of ``now``, the index in ``earlier`` of the prompt it extends (or None);
    None when ``earlier`` is not a strict subset of ``now`` (Roboflow's ``is_prompt_strict_subset``)."""
    if sorted(map(_sortable, earlier)) == sorted(map(_sortable, now)):
        return None
    matched: list[int | None] = [None] * len(now)
    for index, old in enumerate(earlier):
        for position, new in enumerate(now):
            if matched[position] is None and old.box == new.box and old.points <= new.points:
                matched[position] = index
                break
        else:
            return None
    return matched


def _sortable(key: PromptKey) -> str:
    return json.dumps(key.as_json())


def _points(keys: list[PromptKey]) -> int:
    return sum(len(key.points) for key in keys)


class LogitsIndex(SqliteStore):
    """Which ``mask_id`` answered each prompt of a prompt set, by image (the caller's key id and the
    ``image_id``); the newest :data:`MAX_ENTRIES` sets. Safe from any thread and process."""

    SCHEMA = (_SCHEMA, _INDEX)  # reset() at server start: the model service's logits are gone too

    def __init__(self, path: str | Path, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        super().__init__(path)

    def save(self, image: str, prompts: list[PromptKey], mask_ids: list[str]) -> None:
        pairs = sorted(zip(map(_sortable, prompts), mask_ids))
        text = json.dumps([key for key, _ in pairs])  # the set itself: saved again, it replaces its row
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM logits WHERE image = ? AND prompts = ?", (image, text))
            db.execute("INSERT INTO logits (image, prompts, mask_ids) VALUES (?, ?, ?)",
                       (image, text, json.dumps(pairs)))
            db.execute("DELETE FROM logits WHERE id <= (SELECT MAX(id) FROM logits) - ?", (self.max_entries,))

    def find(self, image: str, prompts: list[PromptKey]) -> list[str | None]:
        """Each prompt's ``mask_id`` to refine, from the earlier set that Roboflow would pick; all
        None when no earlier set of this image is a strict subset of ``prompts``."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT mask_ids FROM logits WHERE image = ? ORDER BY id DESC LIMIT ?",
                              (image, SCANNED)).fetchall()
        wanted = _points(prompts) - 1
        best: tuple[int, list[str | None]] | None = None
        for (text,) in rows:  # newest first
            pairs = json.loads(text)
            earlier = [PromptKey.from_json(json.loads(key)) for key, _ in pairs]
            matched = match(earlier, prompts)
            if matched is None:
                continue
            ids = [None if i is None else pairs[i][1] for i in matched]
            size = _points(earlier)
            if size == wanted:
                return ids
            if best is None or size > best[0]:
                best = (size, ids)
        return best[1] if best else [None] * len(prompts)
