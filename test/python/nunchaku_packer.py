"""An independent numpy statement of Nunchaku's packed checkpoint layouts, for the converter tests.

Written from the packers' reshape/permute recipes (nunchaku/lora/flux/packer.py NunchakuWeightPacker
with bits=4, warp_n=128; deepcompressor's convert_to_nunchaku_w4x16_linear_weight and tinychat's pack_w4
for the AWQ adaLN layers), not from our C++ unpacker, which works from closed-form index formulas: a
mistake in either shows up as a mismatch. Shapes must already be padded (out and in multiples of 128).
"""
from __future__ import annotations

import numpy as np

GELU_SHIFT = 0.171875  # Nunchaku's SHIFT_GELU: INT4 mlp_fc2 quantizes (gelu + shift) / smooth unsigned


def pack_weight(q: np.ndarray) -> np.ndarray:
    """4-bit values [n, k] (INT4 -8..7 or E2M1 codes) -> int8 [n, k/2] in 128x64 MMA tiles."""
    n, k = q.shape
    assert n % 128 == 0 and k % 128 == 0, (n, k)
    w = (q.astype(np.int64) & 0xF).reshape(n // 128, 8, 2, 8, 1, k // 64, 1, 2, 4, 8)
    # (n_tiles, n_packs, n_pack_size, n_lanes, reg_n, k_tiles, k_packs, k_pack_size, k_lanes, reg_k) ->
    # (n_tiles, k_tiles, k_packs, n_packs, n_lanes, k_lanes, n_pack_size, k_pack_size, reg_n, reg_k)
    w = w.transpose(0, 5, 6, 1, 3, 8, 2, 7, 4, 9)
    words = (w << np.arange(0, 32, 4)).sum(axis=-1).astype(np.uint32)  # 8 nibbles per word, lowest first
    return np.ascontiguousarray(words).astype("<u4").view(np.int8).reshape(n, k // 2)


def pack_scale(s: np.ndarray) -> np.ndarray:
    """Per-channel values [n] or group scales [n, g] -> the flat storage order (blocks of 128 channels)."""
    s = s.reshape(s.shape[0], -1)
    n, g = s.shape
    assert n % 128 == 0, n
    # warp_n = 128: s_pack_size 4, 32 lanes, 1 pack
    x = s.reshape(n // 128, 1, 8, 2, 4, 2, g).transpose(0, 6, 1, 2, 4, 3, 5)
    return np.ascontiguousarray(x).reshape(-1)


def pack_micro_scale(s: np.ndarray) -> np.ndarray:
    """NVFP4 E4M3 scales [n, k/16] (bytes) -> the flat storage order (pack_micro_scale, warp_n = 128)."""
    n, g = s.shape
    assert n % 128 == 0 and g % 4 == 0, (n, g)
    # (n_tiles, packs 1, s_pack_size 4, 4, 8, k/64, insn_k/16 = 4) -> (n_tiles, k/64, packs, 8, 4, s_pack_size, 4)
    x = s.reshape(n // 128, 1, 4, 4, 8, g // 4, 4).transpose(0, 5, 1, 4, 3, 2, 6)
    return np.ascontiguousarray(x).reshape(-1)


def pack_lowrank(w: np.ndarray, down: bool) -> np.ndarray:
    """down: [r, c] -> stored [c, r]; up: [c, r] -> stored [c, r]; 16x16 blocks (channel block, rank block)."""
    if down:
        r, c = w.shape
        w = w.reshape(r // 16, 16, c // 16, 16).transpose(2, 0, 1, 3)
    else:
        c, r = w.shape
        w = w.reshape(c // 16, 16, r // 16, 16).transpose(0, 2, 1, 3)
    # (c_packs, r_packs, n_pack_size 2, n_lanes 8, reg_n 1, k_pack_size 2, k_lanes 4, reg_k 2) ->
    # (c_packs, r_packs, n_lanes, k_lanes, n_pack_size, k_pack_size, reg_n, reg_k)
    w = w.reshape(c // 16, r // 16, 2, 8, 1, 2, 4, 2).transpose(0, 1, 3, 6, 2, 5, 4, 7)
    return np.ascontiguousarray(w).reshape(c, r)


def pack_awq(q: np.ndarray) -> np.ndarray:
    """Unsigned 4-bit [oc, ic] -> int32 [oc/4, ic/2] (tinychat pack_w4, viewed as int32 like the exporter)."""
    oc, ic = q.shape
    w = q.astype(np.int32).reshape(-1, 4, 8)
    w = w[:, 0] | (w[:, 1] << 4) | (w[:, 2] << 8) | (w[:, 3] << 12)
    w = w.reshape(oc // 4, 4, ic // 64, 16).transpose(0, 2, 1, 3).reshape(oc // 4, ic)
    return np.ascontiguousarray(w.astype(np.uint16)).view(np.int32)


def awq_groups(ic: int, group: int = 64) -> int:
    """Scale rows the tinychat exporter allocates (ceil_num_groups): whole int32 packs, pairs of packs."""
    packs = -(-(ic // group) // 8)
    return -(-packs // 2) * 2 * 8


def interleave_rows(x: np.ndarray, splits: int) -> np.ndarray:
    """adaLN output rows (chunk c, channel i) -> row i * splits + c (deepcompressor adanorm_splits)."""
    oc = x.shape[0]
    return np.ascontiguousarray(x.reshape(splits, oc // splits, *x.shape[1:]).swapaxes(0, 1)).reshape(x.shape)
