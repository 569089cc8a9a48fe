"""The logits kept for previous_mask_id: LRU by bytes, scoped to the image and the caller."""

from __future__ import annotations

import re

import pytest
import torch

from sam2_api.errors import MaskIdOfAnotherImage, UnknownMaskId
from sam2_api.model.logit_cache import MASK_ID, LogitCache
from sam2_api.messages import scoped_key

LOGITS_BYTES = 256 * 256 * 4


def logits(value: float = 0.0) -> torch.Tensor:
    return torch.full((256, 256), value)


def test_ids_are_opaque_random_and_name_their_logits():
    cache = LogitCache(10 * LOGITS_BYTES)
    first, second = logits(1.0), logits(2.0)
    ids = [cache.put("sha256:ab", first), cache.put("sha256:ab", second)]
    assert all(MASK_ID.fullmatch(mask_id) for mask_id in ids) and ids[0] != ids[1]
    assert cache.get(ids[0], "sha256:ab") is first and cache.get(ids[1], "sha256:ab") is second
    assert (len(cache), cache.nbytes) == (2, 2 * LOGITS_BYTES)


def test_least_recently_used_goes_first_past_the_byte_bound():
    cache = LogitCache(2 * LOGITS_BYTES)
    a, b = cache.put("k", logits()), cache.put("k", logits())
    cache.get(a, "k")  # a is now more recent than b
    c = cache.put("k", logits())
    assert cache.get(a, "k") is not None and cache.get(c, "k") is not None
    with pytest.raises(UnknownMaskId):
        cache.get(b, "k")
    assert cache.nbytes == 2 * LOGITS_BYTES


def test_a_zero_bound_keeps_nothing_but_still_names_masks():
    cache = LogitCache(0)
    mask_id = cache.put("k", logits())
    assert MASK_ID.fullmatch(mask_id) and len(cache) == 0
    with pytest.raises(UnknownMaskId, match="send the request again without it"):
        cache.get(mask_id, "k")


def test_another_image_of_the_same_caller_is_a_400_another_callers_id_looks_unknown():
    cache = LogitCache(10 * LOGITS_BYTES)
    mine = cache.put(scoped_key("tenant-a", "id:cat"), logits())
    with pytest.raises(MaskIdOfAnotherImage, match=re.escape(f"previous_mask_id {mine!r} belongs to a mask of another image")):
        cache.get(mine, scoped_key("tenant-a", "id:dog"))
    # Another tenant, even on an image of the same name: exactly what an unknown id gets.
    with pytest.raises(UnknownMaskId) as foreign:
        cache.get(mine, scoped_key("tenant-b", "id:cat"))
    with pytest.raises(UnknownMaskId) as unknown:
        cache.get("m_" + "x" * 22, scoped_key("tenant-b", "id:cat"))
    assert str(foreign.value).replace(mine, "ID") == str(unknown.value).replace("m_" + "x" * 22, "ID")
    with pytest.raises(UnknownMaskId):
        cache.get(mine, "id:cat")  # no API keys on that request: not tenant-a either
    assert cache.get(mine, scoped_key("tenant-a", "id:cat")) is not None


def test_without_api_keys_any_other_image_is_a_400():
    cache = LogitCache(10 * LOGITS_BYTES)
    mask_id = cache.put("sha256:aa", logits())
    with pytest.raises(MaskIdOfAnotherImage):
        cache.get(mask_id, "sha256:bb")
