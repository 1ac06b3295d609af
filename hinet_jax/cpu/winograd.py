"""Winograd F(2x2, 3x3) convolution (Lavin & Gray 2016) for stride-1, padding-1 3x3 convs.

Output tile 2x2 from input tile 4x4 (stride 2):  Y = A^T [ (G g G^T) * (B^T d B) ] A, with

  B^T = [[1, 0, -1,  0],      G = [[1,    0,   0 ],      A^T = [[1, 1,  1,  0],
         [0, 1,  1,  0],           [1/2,  1/2, 1/2],             [0, 1, -1, -1]]
         [0, -1, 1,  0],           [1/2, -1/2, 1/2],
         [0, 1,  0, -1]]           [0,    0,   1 ]]

16 batched matmuls over channels; transforms as adds on strided slices. A forward only: the
autodiff of the slices is slow on XLA:CPU (`convolution.winograd_conv` pairs it with another
backward). `kernel_transform` is the reference for the C++ `kernels.pack_winograd`.
"""

import jax
import jax.numpy as jnp

def _input_transform(xp: jax.Array, axis: int, tiles: int) -> jax.Array:
  """B^T along `axis` of the padded input: returns 4 arrays with `tiles` entries on `axis`."""
  def sl(start):
    return jax.lax.slice_in_dim(xp, start, start + 2 * tiles - 1, stride=2, axis=axis)
  r0, r1, r2, r3 = sl(0), sl(1), sl(2), sl(3)
  return [r0 - r2, r1 + r2, r2 - r1, r1 - r3]


def _g_rows(k0, k1, k2, tile):
  """G of F(tile x tile, 3x3) along one axis: 3 slices in, tile + 2 out."""
  if tile == 2:
    return [k0, 0.5 * (k0 + k1 + k2), 0.5 * (k0 - k1 + k2), k2]
  return [k0 / 4, -(k0 + k1 + k2) / 6, -(k0 - k1 + k2) / 6, k0 / 24 + k1 / 12 + k2 / 6,
          k0 / 24 - k1 / 12 + k2 / 6, k2]


def kernel_transform(kernel: jax.Array, tile: int = 2) -> jax.Array:
  """G g G^T (tile 2 or 4) of a (3, 3, C, O) kernel, as adds (an einsum is far slower on
  XLA:CPU: bench/README.md)."""
  rows = _g_rows(kernel[0], kernel[1], kernel[2], tile)  # each (3, C, O)
  return jnp.stack([jnp.stack(_g_rows(r[0], r[1], r[2], tile), 0) for r in rows], 0)


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, dtype=jnp.float32) -> jax.Array:
  """3x3 stride-1 'SAME' conv, NHWC x HWIO -> NHWC in `dtype`, by Winograd F(2x2, 3x3)."""
  n, h, w, c = x.shape
  assert kernel.shape[:3] == (3, 3, c), kernel.shape
  th, tw = (h + 1) // 2, (w + 1) // 2
  x = x.astype(dtype)
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
  # B^T d B: rows then columns. v[a][b]: (N, th, tw, C).
  rows = _input_transform(xp, 1, th)
  v = jnp.stack([jnp.stack(_input_transform(r, 2, tw), 0) for r in rows], 0)  # (4,4,N,th,tw,C)
  u = kernel_transform(kernel.astype(jnp.float32)).astype(dtype)
  m = jnp.einsum('abnhwc,abco->abnhwo', v, u)  # 16 batched matmuls
  # A^T m A: along a, then b.
  t = [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]  # each (4, N, th, tw, O)
  y = jnp.stack([jnp.stack([q[0] + q[1] + q[2], q[1] - q[2] - q[3]], 0) for q in t], 0)
  # y: (2[row], 2[col], N, th, tw, O) -> (N, th, 2, tw, 2, O)
  y = jnp.transpose(y, (2, 3, 0, 4, 1, 5)).reshape(n, 2 * th, 2 * tw, -1)
  return y[:, :h, :w, :]

