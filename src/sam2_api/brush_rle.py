"""Label Studio's brush RLE: the ``rle`` of a ``brushlabels`` result, written with numpy.

The format (Label Studio's editor decodes it with thi.ng's ``rle-pack``; ``label_studio_sdk.
converter.brush`` has the Python codec) is a bit stream over the flattened RGBA image, row by row,
four bytes a pixel:

- a header: the number of values (32 bits), the word size less one (5 bits: 7, bytes), and the four
  run-length field sizes less one (4 bits each: 3, 4, 8, 16 bits);
- then records, high bit first: ``1`` for a run, ``0`` for literals; two bits choosing a field
  size; the run length less one in that many bits; the value (8 bits). Runs longer than 65,536
  values are cut into runs of 65,536 and a remainder.
- zero bits up to the next whole byte, and one whole zero byte more when the stream already ended
  on one (what the SDK's ``encode_rle`` writes).

A mask becomes the RGBA image whose four channels are 255 on the object and 0 elsewhere, which is
what the SDK's ``mask2rle(mask * 255)`` encodes and what Label Studio's own SAM examples send: the
editor reads the alpha channel. :func:`encode` writes exactly the SDK's bytes (tests/clients
checks it), but from the mask's runs rather than bit strings of every value, so a 12-megapixel
mask takes milliseconds rather than minutes.
"""

from __future__ import annotations

import numpy as np

CHANNELS = 4  # RGBA
WORD_BITS = 8
FIELD_BITS = (3, 4, 8, 16)  # the four run-length field sizes, chosen by a record's 2-bit index
LONGEST_RUN = 2 ** FIELD_BITS[-1]  # 65,536 values: the most one record holds
CHUNK = 1 << 16  # runs (then records) turned into bits at a time


def encode(mask: np.ndarray) -> list[int]:
    """``mask`` (H, W), true on the object, as Label Studio's brush RLE bytes (a list of 0-255)."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    count = flat.size * CHANNELS
    if count >= 2**32:
        raise ValueError(f"a brush RLE holds fewer than 2**32 values; this mask has {count}")
    if flat.size == 0:
        lengths, values = np.zeros(0, np.int64), np.zeros(0, np.int64)
    else:
        ends = np.append(np.flatnonzero(flat[1:] != flat[:-1]), flat.size - 1)  # last index of each run
        lengths = np.diff(np.append(-1, ends)).astype(np.int64) * CHANNELS
        values = flat[ends].astype(np.int64) * 255
    # Record by record, a chunk of runs at a time: the bit-level arrays of a whole mask with millions
    # of runs would take gigabytes (eight bytes an output bit) where the answer takes megabytes.
    header = (count << 21) | ((WORD_BITS - 1) << 16)
    for index, bits in enumerate(FIELD_BITS):
        header |= (bits - 1) << (12 - 4 * index)
    code_parts, width_parts = [np.array([header], np.int64)], [np.array([53], np.uint8)]
    for start in range(0, lengths.size, CHUNK):
        chunk_codes, chunk_widths = _records(lengths[start:start + CHUNK], values[start:start + CHUNK])
        code_parts.append(chunk_codes)
        width_parts.append(chunk_widths.astype(np.uint8))  # at most 1 + 2 + 16 + 8 bits
    del lengths, values
    codes, widths = np.concatenate(code_parts), np.concatenate(width_parts)
    total = int(widths.sum(dtype=np.int64))
    total += 8 - total % 8  # the SDK pads with 1-8 zero bits, never none
    return _concatenated_bits(codes, widths, total).tolist()


def _records(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each run as its records: the code (an integer, high bit first) and its width in bits."""
    # Runs over 256 values take 16-bit fields, cut into pieces of LONGEST_RUN and a remainder.
    pieces = np.where(lengths > 256, (lengths - 1) // LONGEST_RUN + 1, 1)
    run = np.repeat(np.arange(lengths.size), pieces)
    first_piece = np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece = np.arange(run.size) - first_piece
    length = np.where(piece < pieces[run] - 1, LONGEST_RUN, lengths[run] - LONGEST_RUN * piece)
    length = np.where(lengths[run] > 256, length, lengths[run])
    value = values[run]
    long = lengths[run] > 256
    field = np.select([long, length > 16, length > 8], [3, 2, 1], default=0)
    field_bits = np.asarray(FIELD_BITS, np.int64)[field]
    single = (length == 1) & ~long  # a literal of one value: "0 00 000 value"
    flag = np.where(single, 0, 1)
    widths = 1 + 2 + field_bits + WORD_BITS
    codes = (flag << (widths - 1)) | (field << (field_bits + WORD_BITS)) | ((length - 1) << WORD_BITS) | value
    return codes.astype(np.int64), widths.astype(np.int64)


def _concatenated_bits(codes: np.ndarray, widths: np.ndarray, total: int) -> np.ndarray:
    """The codes' bits one after another (each ``widths[i]`` bits, high bit first), zero-padded
    to ``total`` bits, as bytes."""
    bits = np.zeros(total, np.uint8)
    position = 0
    for start in range(0, codes.size, CHUNK):
        chunk, width = codes[start:start + CHUNK], widths[start:start + CHUNK].astype(np.int64)
        used = int(width.sum())
        record = np.repeat(np.arange(chunk.size), width)
        offset = np.arange(used) - np.repeat(np.cumsum(width) - width, width)
        bits[position:position + used] = (chunk[record] >> (width[record] - 1 - offset)) & 1
        position += used
    return np.packbits(bits)
