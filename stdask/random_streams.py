"""Keyed random streams: every random number stdask draws comes from a stream named by a key.

A stream is a pure function of its key (and, for counter-based generators, of a counter), never of the
worker, the tile, the chunk size or the order in which work is done, so one worker and eight give the same
bits. Three kinds of keys, each with the generator its users need:

* ``(seed, purpose, block)`` integers: :func:`sequence_stream`, a PCG64DXSM generator seeded by
  ``SeedSequence([seed, purpose, block])``, and :func:`sequence_key`, a 64-bit key from the same sequence
  (the synthetic generator: one stream per purpose and block of observations).
* ``(seed, name[, counters])`` with a string name: :func:`philox_stream`, numpy's Philox4x64-10 keyed by
  ``(seed, name_key(name))`` (the background pairs of an LR, SpaSEG's permutations).
* 64-bit key and counter, for compiled kernels that draw each number on its own:
  :func:`counter_uniform` (SplitMix64's finaliser of ``key + counter * golden``) and the Philox4x64-10 block
  function :func:`philox4x64` with the buffered 32-bit draw :func:`next_uint32`; the latter is bit for bit
  ``np.random.Philox(key=(k0, k1), counter=(0, c1, c2, c3)).random_raw()`` (:func:`philox_raw`).

The 128-bit products of Philox use one LLVM ``mul i128`` (an intrinsic), so the compiled generator runs at
numpy's speed.
"""
from __future__ import annotations

import hashlib

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["name_key", "sequence_key", "sequence_stream", "philox_stream", "counter_uniform", "counter_uniforms",
           "philox4x64", "philox_raw", "next_uint32", "rewind", "STATE_WORDS"]

_MASK64 = 2**64 - 1


# ---------------------------------------------------------------------------------------------------------
# keys and numpy generators
# ---------------------------------------------------------------------------------------------------------
def name_key(name: str) -> int:
    """A stable 64-bit key of a name (BLAKE2b of its UTF-8 bytes, little-endian)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


def sequence_key(seed: int, purpose: int, block: int) -> int:
    """64-bit key of ``(seed, purpose, block)``: the first word ``SeedSequence([seed, purpose, block])`` generates."""
    return int(np.random.SeedSequence([int(seed), int(purpose), int(block)]).generate_state(1, np.uint64)[0])


def sequence_stream(seed: int, purpose: int, block: int = 0) -> np.random.Generator:
    """The random stream keyed by ``(seed, purpose, block)``.

    Parameters
    ----------
    seed
        Non-negative seed.
    purpose
        What the stream draws (a small integer constant of the caller's, part of the key).
    block
        Index of a fixed-size block of observations (0 for global streams).

    Returns
    -------
    numpy.random.Generator
        A PCG64DXSM generator seeded from ``SeedSequence([seed, purpose, block])``: one independent stream per
        key.
    """
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence([int(seed), int(purpose), int(block)])))


def philox_stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """A Philox4x64-10 generator keyed by ``(seed, name[, extra counters])``.

    The key is ``(seed mod 2**64, k)`` with ``k = name_key(name)``, then ``k = name_key(f"{k}:{e}")`` for each
    ``e`` of ``extra`` in turn.
    """
    key = name_key(name)
    for e in extra:
        key = name_key(f"{key}:{int(e)}")
    # an explicit uint64 array: a Python list is converted through float64, which zeroes keys >= 2**63
    return np.random.Generator(np.random.Philox(key=np.array([int(seed) & _MASK64, key], dtype=np.uint64)))


# ---------------------------------------------------------------------------------------------------------
# counter-based uniforms (SplitMix64), one number per counter
# ---------------------------------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0 ** -53


@njit(inline="always")
def counter_uniform(key, counter):
    """The float64 in [0, 1) of ``counter`` (uint64) under ``key`` (uint64), in compiled code.

    SplitMix64's finaliser applied to ``key + counter * golden``; the top 53 bits give the float. A pure
    function of the counter, so any number can be computed alone, in any order or thread.
    """
    z = key + counter * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * _TO_UNIT


@njit(cache=True)
def _fill_uniforms(key, out):  # pragma: no cover - compiled
    n, g = out.shape
    for i in range(n):
        for j in range(g):
            out[i, j] = counter_uniform(key, np.uint64(i * g + j + 1))


def counter_uniforms(key: int, n: int, g: int) -> np.ndarray:
    """The uniforms of counters ``1 .. n * g`` under ``key`` as an (n, g) float64 array: entry ``(i, j)`` is
    :func:`counter_uniform` of ``(key, i * g + j + 1)``."""
    out = np.empty((int(n), int(g)), dtype=np.float64)
    _fill_uniforms(np.uint64(key), out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Philox4x64-10 in compiled code
# ---------------------------------------------------------------------------------------------------------
# Philox4x64 constants (Salmon et al. 2011, Random123; the ones numpy uses)
_M0 = np.uint64(0xD2E7470EE14C6C93)
_M1 = np.uint64(0xCA5A826395121157)
_W0 = np.uint64(0x9E3779B97F4A7C15)
_W1 = np.uint64(0xBB67AE8584CAA73B)
_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_EIGHT = np.uint64(8)
_ONE = np.uint64(1)

#: uint64 words of the state :func:`next_uint32` keeps: 4 buffered raw outputs, the block counter, the index of
#: the next 32-bit draw in the buffer
STATE_WORDS = 6


@intrinsic
def _mulhi64(typingctx, a, b):
    """High 64 bits of the 128-bit product of two uint64 (one ``mul`` on x86-64 and arm64)."""
    if a != types.uint64 or b != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(p, ir.Constant(i128, 64)), ir.IntType(64))

    return types.uint64(types.uint64, types.uint64), codegen


@njit(inline="always")
def _mulhilo(a, b):
    """(high, low) 64-bit halves of the 128-bit product of two uint64."""
    return _mulhi64(a, b), a * b


@njit(inline="always")
def philox4x64(c0, c1, c2, c3, k0, k1):
    """Philox4x64-10 of counter (c0..c3) under key (k0, k1), all uint64: four uint64."""
    for r in range(10):
        if r > 0:
            k0 = k0 + _W0
            k1 = k1 + _W1
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@njit(cache=True, nogil=True)
def philox_raw(k0, k1, c1, c2, c3, n):
    """The first ``n`` raw uint64 of the stream (key (k0, k1), counter base (0, c1, c2, c3)): numpy's
    ``Philox(key=[k0, k1], counter=[0, c1, c2, c3]).random_raw(n)``, which increments the counter before each
    block of four outputs."""
    out = np.empty(n, np.uint64)
    b = np.uint64(0)
    for i in range(0, n, 4):
        b = b + _ONE
        r0, r1, r2, r3 = philox4x64(b, c1, c2, c3, k0, k1)
        out[i] = r0
        if i + 1 < n:
            out[i + 1] = r1
        if i + 2 < n:
            out[i + 2] = r2
        if i + 3 < n:
            out[i + 3] = r3
    return out


@njit(inline="always")
def rewind(st):
    """Put the state ``st`` ((:data:`STATE_WORDS`,) uint64) at the start of its stream."""
    st[4] = 0
    st[5] = _EIGHT


@njit(inline="always")
def next_uint32(st, k0, k1, c1, c2, c3):
    """Next 32-bit draw (as uint64) of the stream (key (k0, k1), counter base (0, c1, c2, c3)) whose state
    ``st`` holds (see :data:`STATE_WORDS`; :func:`rewind` first). Each raw 64-bit output of
    :func:`philox_raw` gives two draws, its low half first."""
    if st[5] >= _EIGHT:
        st[4] = st[4] + _ONE
        st[0], st[1], st[2], st[3] = philox4x64(st[4], c1, c2, c3, k0, k1)
        st[5] = 0
    q = st[5]
    st[5] = q + _ONE
    w = st[q >> _ONE]
    return (w >> _S32) if (q & _ONE) else (w & _LO32)
