"""Per-row random keys that depend only on (seed, id): what makes whole-pool sampling exact.

Every row gets a uniform ``u`` in (0, 1) from a hash of its id and the seed, so the same row draws
the same ``u`` whatever the sharding, the actor, a retry or a resume. A shard keeps the rows with
the smallest keys; the reducer merges those like the top-k, and the global smallest keys follow.

- ``random``: key ``u`` (a uniform sample without replacement).
- ``power``: key ``-ln(u) / score^power``, the exponential clock of Efraimidis and Spirakis (2006):
  the order of the keys is a draw without replacement with P(row) proportional to
  ``score^power`` (Kirsch et al. 2023 call this power acquisition). A score <= 0 gets an infinite
  key: never drawn while another row remains.

Hashes: an int64 id is taken as its 64 bits; a string id is FNV-1a 64 over its UTF-8 bytes. Both
are then mixed with the seed by splitmix64 (Steele et al. 2014). numpy only, no torch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["id_hashes", "power_keys", "row_uniforms", "uniform_stream"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _string_hashes(ids: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes; the work is one pass over the bytes (rows sorted
    by length, so each step touches a contiguous prefix)."""
    ids = ids.cast(pa.large_string()) if not pa.types.is_large_string(ids.type) else ids
    if ids.null_count:
        raise ValueError("ids must not be null")
    _, offsets_buf, data_buf = ids.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[ids.offset: ids.offset + len(ids) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[order], lengths[order]
    hashes = np.full(len(ids), _FNV_OFFSET, np.uint64)
    active = len(ids)
    with np.errstate(over="ignore"):
        for j in range(int(lengths[0]) if len(ids) else 0):
            while active and lengths[active - 1] <= j:
                active -= 1
            byte = data[starts[:active] + j].astype(np.uint64)
            hashes[:active] = (hashes[:active] ^ byte) * _FNV_PRIME
    out = np.empty_like(hashes)
    out[order] = hashes
    return out


def id_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``[n]`` uint64: one 64-bit hash per id (int ids: their bits; string ids: FNV-1a 64)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        return ids.cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return _string_hashes(ids)
    raise TypeError(f"ids are integers or strings; got {ids.type}")


def _seed_mix(seed: int, salt: int) -> np.uint64:
    """splitmix64 of ``(seed << 8) ^ salt``; a seed of more than 56 bits (a nanosecond
    timestamp) mixes in each further 64-bit word by one more splitmix64."""
    value = (seed << 8) ^ salt
    mix = _splitmix64(np.array([value % 2**64], np.uint64))[0]
    for shift in range(64, value.bit_length(), 64):
        mix = _splitmix64(np.array([mix ^ np.uint64((value >> shift) % 2**64)]))[0]
    return mix


def _uniforms(hashes: np.ndarray, seed: int, salt: int) -> np.ndarray:
    seed_mix = _seed_mix(seed, salt)
    z = _splitmix64(_splitmix64(hashes ^ seed_mix))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def row_uniforms(ids: pa.Array | pa.ChunkedArray, seed: int, salt: int = 0) -> np.ndarray:
    """``[n]`` float64 in (0, 1): each row's uniform, a function of (seed, salt, id) only."""
    return _uniforms(id_hashes(ids), seed, salt)


def uniform_stream(seed: int, n: int, salt: int) -> np.ndarray:
    """``[n]`` float64 in (0, 1): the ``n`` uniforms a seeded method draws, in order (the same
    on every machine and device, so a reference implementation can draw them too)."""
    return _uniforms(np.arange(n, dtype=np.uint64), seed, salt)


def power_keys(uniforms: np.ndarray, scores: np.ndarray, power: float) -> np.ndarray:
    """``[n]`` float64 keys ``-ln(u) / score^power`` (smaller is drawn first); ``inf`` where the
    score is <= 0 or not finite."""
    weights = np.power(np.clip(scores.astype(np.float64), 0.0, None), power)
    with np.errstate(divide="ignore"):
        keys = -np.log(uniforms) / weights
    keys[~(weights > 0) | ~np.isfinite(weights)] = np.inf
    return keys

