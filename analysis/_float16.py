"""Private helper: float16 bit patterns as unsigned keys in the order of the values, and back.

A positive float16's bits get the top bit set, a negative one's are inverted: the keys (uint16) sort as the values
do, -0.0 just below +0.0, NaNs outside the infinities. The statistics (min, max and threshold counts) and the
examples' bin tables both work on these keys instead of float64 copies.
"""

from __future__ import annotations

import numpy as np


def ordered16(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float16 bit patterns (uint16) -> uint16 keys in the order of the values (into ``out``, uint16, if given).

    Examples
    --------
    >>> v = np.array([-np.inf, -2.0, -0.0, 0.0, 1e-7, 0.5, np.inf], np.float16)
    >>> k = ordered16(v.view(np.uint16))
    >>> bool((np.diff(k.astype(int)) > 0).all()), bool((from_ordered16(k).view(np.float16) == v).all())
    (True, True)
    """
    flip = np.right_shift(bits.view(np.int16), 15, out=None if out is None else out.view(np.int16))
    flip = flip.view(np.uint16)  # all ones where negative, else 0
    flip |= np.uint16(0x8000)
    return np.bitwise_xor(bits, flip, out=flip)


def from_ordered16(keys: np.ndarray) -> np.ndarray:
    """The float16 bit patterns (uint16) of :func:`ordered16` keys (any unsigned or non-negative integer array)."""
    keys = np.asarray(keys).astype(np.uint16)
    return np.where(keys & 0x8000, keys ^ 0x8000, ~keys).astype(np.uint16)
