"""A quantized frozen base: int8 and NF4 storage of the projection kernels, dequantized inside each layer.

A projection's [D_in, D_out] kernel (stacked [L, D_in, D_out]) is stored as two leaves beside each other:
  nf4:  `kernel_nf4`   uint8 [.., D_in/2, D_out]  two 4-bit codes per byte along D_in, the even row in the
                                                  high nibble (bitsandbytes' packing of its [D_out, D_in] weight)
        `kernel_absmax` float32 [.., D_in/block, D_out]  one absmax per `block` consecutive inputs of an output
  int8: `kernel_int8`  int8 [.., D_in, D_out]
        `kernel_absmax` float32 [.., 1, D_out]        one absmax per output channel
Both are laid out along the kernel, so sharding.py shards them with the kernel's (in, out) axes.

NF4 is QLoRA's (bitsandbytes `quantize_4bit(quant_type="nf4")`): its 16-value code book, block-wise absmax
over each output's inputs, x * (1 / absmax) clamped to [-1, 1] and rounded to the code whose midpoint
interval holds it (a tie goes to the lower code, torch.bucketize's rule); dequantization is code * absmax in
float32. int8 is bitsandbytes' vector-wise int8 (LLM.int8's weight format, no outlier split): round(w *
(127 / absmax)) per output channel, w = q * absmax * (1/127). tests/test_quant.py holds both to bitsandbytes bit for bit.

Written here rather than taken from qwix (Tunix's QLoRA) or aqtp: those quantize by intercepting
nnx.Linear / einsum calls of a module they rewrite and keep their own quantized-array leaves, while this
model's projections are a functional matmul over plain pytree leaves that sharding.py, Orbax and hf.py name
by path, and the parity target here is bitsandbytes' exact packing and rounding. The one piece that is not a
library call is `qmatmul`: a custom VJP whose backward re-dequantizes the layer's kernel from its codes, so a
scanned layer saves its codes, never a float copy of its kernel, for the backward pass.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hinqa_jax.matmul import matmul

MODES = ("", "int8", "nf4")
# QLoRA's NormalFloat4 code book (bitsandbytes `get_4bit_type("nf4")`, QLoRA paper appendix E).
NF4_CODE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], np.float32)
_NF4_BOUNDS = ((NF4_CODE[:-1] + NF4_CODE[1:]) / np.float32(2)).astype(np.float32)  # midpoints, as bnb's
CODE_LEAF = {"nf4": "kernel_nf4", "int8": "kernel_int8"}
SCALE_LEAF = "kernel_absmax"


def _xp(w):
  return np if isinstance(w, np.ndarray) else jnp


def check(mode: str, block: int, d_in: int | None = None, where: str = "") -> None:
  """A ValueError unless `mode` is known and NF4's `block` is even and divides d_in."""
  if mode not in MODES:
    raise ValueError(f"{where}quantize={mode!r}: must be one of {MODES}")
  if mode == "nf4":
    if block < 2 or block % 2:
      raise ValueError(f"{where}quantize_block={block}: must be an even number >= 2")
    if d_in is not None and d_in % block:
      raise ValueError(f"{where}quantize_block={block} does not divide a projection's input size {d_in}")


# ----------------------------------------------------------------------------- NF4
def nf4_quantize(w_io, block: int):
  """(codes uint8 [.., I/2, O], absmax float32 [.., I/block, O]) of w [.., I, O]: numpy in, numpy out (host
  loading), jax in, jax out (init)."""
  xp = _xp(w_io)
  *lead, d_in, d_out = w_io.shape
  w = w_io.astype(xp.float32).reshape(*lead, d_in // block, block, d_out)
  absmax = xp.max(xp.abs(w), axis=-2)
  # bnb clamps absmax at 1e-38, a float32 subnormal that XLA:CPU (and jax's process) flush to zero: an all-zero
  # block would give 0 * inf; its codes are bnb's, zero's code, either way.
  inv = xp.where(absmax > 0, xp.float32(1.0) / xp.maximum(absmax, xp.float32(1e-38)), xp.float32(0.0))
  scaled = xp.clip(w * inv[..., None, :], -1.0, 1.0).reshape(*lead, d_in, d_out)
  q = xp.searchsorted(xp.asarray(_NF4_BOUNDS), scaled.reshape(-1), side="left").astype(xp.uint8)
  q = q.reshape(*lead, d_in // 2, 2, d_out)
  codes = (q[..., 0, :] << 4) | q[..., 1, :]
  return codes.astype(xp.uint8), absmax.astype(xp.float32)


def nf4_dequantize(codes, absmax, dtype=jnp.float32):
  """w [.., I, O] in `dtype` from nf4_quantize's pair: code * absmax in float32, then cast."""
  xp = _xp(codes)
  *lead, half, d_out = codes.shape
  q = xp.stack([codes >> 4, codes & 15], axis=-2).reshape(*lead, 2 * half, d_out)
  vals = xp.asarray(NF4_CODE)[q.astype(xp.int32)]
  n_blocks = absmax.shape[-2]
  w = vals.reshape(*lead, n_blocks, 2 * half // n_blocks, d_out) * absmax[..., None, :]
  return w.reshape(*lead, 2 * half, d_out).astype(dtype)


# ----------------------------------------------------------------------------- int8
def int8_quantize(w_io):
  """(q int8 [.., I, O], absmax float32 [.., 1, O]): per output channel, bitsandbytes' vector-wise rule."""
  xp = _xp(w_io)
  w = w_io.astype(xp.float32)
  absmax = xp.max(xp.abs(w), axis=-2, keepdims=True)
  q = xp.round(w * (xp.float32(127.0) / absmax))
  return q.astype(xp.int8), absmax.astype(xp.float32)


def int8_dequantize(q, absmax, dtype=jnp.float32):
  xp = _xp(q)
  return (q.astype(xp.float32) * absmax * xp.float32(1.0 / 127.0)).astype(dtype)  # bnb's order of products


# ----------------------------------------------------------------------------- leaves
def quantize(w_io, mode: str, block: int = 64) -> dict:
  """The stored leaves of a kernel: {CODE_LEAF[mode]: codes, SCALE_LEAF: absmax}."""
  codes, absmax = nf4_quantize(w_io, block) if mode == "nf4" else int8_quantize(w_io)
  return {CODE_LEAF[mode]: codes, SCALE_LEAF: absmax}


def mode_of(leaves: dict) -> str:
  """"nf4", "int8" or "" (a plain `kernel`) from the leaves a projection holds."""
  return next((m for m, name in CODE_LEAF.items() if name in leaves), "")


def dequantize(leaves: dict, dtype=jnp.float32):
  """A projection's kernel [.., I, O] in `dtype` from its stored leaves (a plain `kernel` is cast)."""
  mode = mode_of(leaves)
  if mode == "nf4":
    return nf4_dequantize(leaves[CODE_LEAF[mode]], leaves[SCALE_LEAF], dtype)
  if mode == "int8":
    return int8_dequantize(leaves[CODE_LEAF[mode]], leaves[SCALE_LEAF], dtype)
  return leaves["kernel"].astype(dtype)


def stored_shapes(d_in: int, d_out: int, mode: str, block: int) -> dict[str, tuple[tuple[int, int], str]]:
  """leaf -> (shape, dtype) of one layer's quantized [d_in, d_out] kernel."""
  if mode == "nf4":
    return {CODE_LEAF[mode]: ((d_in // 2, d_out), "uint8"), SCALE_LEAF: ((d_in // block, d_out), "float32")}
  return {CODE_LEAF[mode]: ((d_in, d_out), "int8"), SCALE_LEAF: ((1, d_out), "float32")}


def stored_rows(read_rows, leaf: str, rows: slice, d_in: int, mode: str, block: int, shared: dict, key) -> np.ndarray:
  """Rows `rows` of one stored leaf of a kernel with d_in inputs, quantized on the host from only the kernel
  rows they cover, widened to whole quantization blocks: read_rows(lo, hi) gives kernel rows [lo, hi) in
  float32 (one process's columns). `shared` (one per kernel; `key` names the columns read) keeps each
  quantized block for the kernel's other leaf: codes and absmax of a slice cost one read, one quantization."""
  rows_per = {SCALE_LEAF: block if mode == "nf4" else d_in, CODE_LEAF["nf4"]: 2, CODE_LEAF["int8"]: 1}[leaf]
  together = block if mode == "nf4" else d_in  # inputs quantized together
  r0, r1, _ = rows.indices(d_in // rows_per)
  lo, hi = (r0 * rows_per) // together * together, -(-(r1 * rows_per) // together) * together
  if key + (lo, hi) not in shared:
    shared[key + (lo, hi)] = quantize(read_rows(lo, hi), mode, block)
  off = lo // rows_per
  return shared[key + (lo, hi)][leaf][r0 - off:r1 - off]


# ----------------------------------------------------------------------------- the matmul
@jax.custom_vjp
def qmatmul(x, codes, absmax):
  """x [.., I] @ dequantize(codes, absmax) [I, O] in x's dtype (float32 accumulation); frozen: no weight
  gradient. The backward re-dequantizes from the codes (its residuals), so the float kernel is never saved."""
  return _qmatmul_fwd(x, codes, absmax)[0]


def _kernel(codes, absmax, dtype):
  leaves = {CODE_LEAF["nf4" if codes.dtype == jnp.uint8 else "int8"]: codes, SCALE_LEAF: absmax}
  return dequantize(leaves, dtype)


def _qmatmul_fwd(x, codes, absmax):
  return matmul(x, _kernel(codes, absmax, x.dtype)), (codes, absmax, jnp.zeros((0,), x.dtype))


def _qmatmul_bwd(res, g):
  codes, absmax, like = res
  return matmul(g, _kernel(codes, absmax, like.dtype).T), None, None


qmatmul.defvjp(_qmatmul_fwd, _qmatmul_bwd)
