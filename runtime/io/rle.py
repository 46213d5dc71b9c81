"""Masks as COCO's uncompressed run-length encoding, the form the HTTP API sends them in.

`{"size": [H, W], "counts": [c0, c1, ...]}`: the mask is read in column-major (Fortran) order and cut into runs
of equal values; the counts alternate between runs of 0 and runs of 1 and always start with a run of 0 (of length
0 when the first pixel is set). Server, client and tests use these two functions and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode an H x W mask (bool, or numbers where nonzero is foreground).

    Returns:
        {"size": [H, W], "counts": list of int}, the counts summing to H * W.

    Raises:
        InputError: not a 2-D array.
    """
    data = np.asarray(mask)
    if data.ndim != 2:
        raise InputError(f"a mask to encode must be H x W, got shape {data.shape}")
    flat = (data != 0).ravel(order="F")
    if flat.size == 0:
        return {"size": [int(data.shape[0]), int(data.shape[1])], "counts": []}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size])))
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return {"size": [int(data.shape[0]), int(data.shape[1])], "counts": [int(c) for c in counts]}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode `encode_rle`'s output (or any COCO uncompressed RLE) to an H x W bool mask.

    Raises:
        InputError: a malformed RLE (missing keys, negative counts, counts not summing to H * W).
    """
    try:
        height, width = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"an RLE needs 'size': [H, W] and integer 'counts', got {exc}") from None
    if height < 0 or width < 0 or counts.ndim != 1 or (counts.size and counts.min() < 0):
        raise InputError(f"malformed RLE: size {height} x {width}, counts must be non-negative integers")
    if int(counts.sum()) != height * width:
        raise InputError(f"malformed RLE: counts sum to {int(counts.sum())}, not {height} x {width} = {height * width}")
    values = (np.arange(counts.size) % 2).astype(bool)
    return np.repeat(values, counts).reshape((height, width), order="F")
