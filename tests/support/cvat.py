"""CVAT's side of the interactor protocol, as its own code does it, for the tests.

- :func:`cvat_payload`: the body CVAT's server posts to an interactor function
  (cvat-ai/cvat ``cvat/apps/lambda_manager/views.py``, ``LambdaFunction.invoke``, the interactor
  branch, and ``_get_image``: the frame's encoded bytes in base64), sent with ``requests``' ``json=``.
- :func:`cvat_reads`: the mask CVAT's browser makes of the answer
  (``cvat-ui/.../controls-side-bar/tools-control.tsx``, ``runInteractionRequest``:
  ``core.utils.mask2Rle(response.mask.flat())`` then ``rle.push(...response.bounds)``, or the whole
  frame's bounds when there are none), placed on the frame as CVAT's canvas places a mask shape
  (``rle2Mask(rle, right - left + 1, bottom - top + 1)`` at ``left, top``). ``mask2Rle`` and
  ``rle2Mask`` are cvat-core's (``cvat-core/src/object-utils.ts``), line by line.
"""

from __future__ import annotations

import base64

import numpy as np


def cvat_payload(frame: bytes, pos_points: list, neg_points: list, obj_bbox: list | None = None) -> dict:
    return {
        "image": base64.b64encode(frame).decode("utf-8"),
        "pos_points": pos_points,
        "neg_points": neg_points,
        "obj_bbox": obj_bbox,
    }


def mask2rle(mask: list) -> list[int]:
    acc: list[int] = []
    for idx, val in enumerate(mask):
        if idx > 0:
            if mask[idx - 1] == val:
                acc[-1] += 1
            else:
                acc.append(1)
            continue
        if val > 0:
            acc.extend([0, 1])
        else:
            acc.append(1)
    return acc


def rle2mask(rle: list[int], width: int, height: int) -> list[int]:
    decoded = [0] * (width * height)
    index, value = 0, 0
    for count in rle:
        for _ in range(count):
            decoded[index] = value
            index += 1
        value = abs(value - 1)
    return decoded


def cvat_reads(response: dict, width: int, height: int) -> np.ndarray:
    """The (height, width) bool mask CVAT shows for an interactor's ``response``."""
    mask = response["mask"]
    rle = mask2rle([value for row in mask for value in row])
    rle += response["bounds"] if response.get("bounds") else [0, 0, len(mask[0]) - 1, len(mask) - 1]
    *counts, left, top, right, bottom = rle
    shape_w, shape_h = right - left + 1, bottom - top + 1
    placed = np.zeros((height, width), dtype=bool)
    placed[top:bottom + 1, left:right + 1] = np.array(rle2mask(counts, shape_w, shape_h), bool).reshape(shape_h, shape_w)
    return placed
