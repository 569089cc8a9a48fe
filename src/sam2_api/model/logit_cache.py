"""The low-resolution logits of returned masks, kept so that the next click can refine them.

SAM's interactive loop feeds the previous prediction's ``256×256`` logits back in as the decoder's
``mask_input``: that is what makes a second click refine the mask instead of starting over. Each
returned mask gets a ``mask_id``, an opaque random token naming its logits here; a later request
sends it as ``previous_mask_id``. The cache lives in the model service (one per replica), bounded
by bytes, least recently used out first.

Each entry is scoped to the image's cache key, which starts with the caller's tenant when API keys
are on (:func:`sam2_api.messages.scoped_key`): another tenant's id is answered exactly as an
unknown one, so nobody learns that it exists; the same tenant's id of another image is a 400.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import MaskIdOfAnotherImage, UnknownMaskId
from ..prompts import MASK_ID_PATTERN
from ..messages import tenant_of

MASK_ID = re.compile(MASK_ID_PATTERN)


def new_mask_id() -> str:
    """128 random bits: unguessable, so an id works as a capability within its tenant. The prefix
    keeps a multipart form's JSON decoding from ever reading one as a number."""
    return "m_" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class _Entry:
    key: str  # the image's cache key, tenant included
    logits: Any  # a 256×256 float32 tensor on the model's device (anything with ``nbytes``)


class LogitCache:
    """A thread-safe LRU of logits by ``mask_id``, bounded by ``max_bytes`` (0: nothing is kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put(self, key: str, logits: Any) -> str:
        """Keep ``logits`` of a mask of the image cached as ``key``; returns its new ``mask_id``."""
        mask_id = new_mask_id()
        size = logits.nbytes
        if size > self.max_bytes:
            return mask_id  # an id that will be unknown, as if evicted at once
        with self._lock:
            self._entries[mask_id] = _Entry(key, logits)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.logits.nbytes
        return mask_id

    def get(self, mask_id: str, key: str) -> Any:
        """The logits named ``mask_id`` (now most recently used), for a request on the image ``key``.

        Raises :class:`UnknownMaskId` when they are not here or belong to another tenant, and
        :class:`MaskIdOfAnotherImage` when the same tenant got them for another image.
        """
        with self._lock:
            entry = self._entries.get(mask_id)
            if entry is not None and tenant_of(entry.key) == tenant_of(key):
                self._entries.move_to_end(mask_id)
            else:
                entry = None
        if entry is None:
            raise UnknownMaskId(
                f"previous_mask_id {mask_id!r} is not known here (never issued to you, or evicted): "
                "send the request again without it, with all of its clicks"
            )
        made_by, used_by = entry.key.partition("@")[2], key.partition("@")[2]  # the model size (engine.model_scoped)
        if entry.key != key and made_by != used_by:
            raise MaskIdOfAnotherImage(
                f"previous_mask_id {mask_id!r} belongs to a mask made by model {made_by or 'default'}, not "
                f"{used_by or 'default'}: send it with the `model` of the request that returned it"
            )
        if entry.key != key:
            raise MaskIdOfAnotherImage(
                f"previous_mask_id {mask_id!r} belongs to a mask of another image: send it with the "
                "image (or image_id) of the request that returned it"
            )
        return entry.logits
