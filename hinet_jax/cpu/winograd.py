"""Winograd F(2x2, 3x3) convolution (Lavin & Gray 2016) for stride-1, padding-1 3x3 convs.

Output tile 2x2 from input tile 4x4 (stride 2):  Y = A^T [ (G g G^T) * (B^T d B) ] A, with

  B^T = [[1, 0, -1,  0],      G = [[1,    0,   0 ],      A^T = [[1, 1,  1,  0],
         [0, 1,  1,  0],           [1/2,  1/2, 1/2],             [0, 1, -1, -1]]
         [0, -1, 1,  0],           [1/2, -1/2, 1/2],
         [0, 1,  0, -1]]           [0,    0,   1 ]]

The elementwise product summed over input channels becomes 16 batched (pixels/4, C) x (C, O)
matmuls (one `einsum`), 2.25x fewer multiplies than the direct conv. Transforms are adds/subs
on strided slices in jnp. Used as a forward only (`convolution.winograd_conv` pairs it with the
backward of the CPU kernels or of `lax.conv`: the autodiff of these slices is slow on XLA:CPU);
its values are tested in tests/test_cpu_convolution.py. `kernel_transform` (also F(4x4, 3x3)'s)
is the reference the CPU kernels' own transform (`kernels.pack_winograd`, in C++) is tested
against.
Layout NHWC, kernel HWIO (3, 3, in, out), 'SAME' zero padding (PyTorch padding=1), any H, W.
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
  """G of F(tile x tile, 3x3) applied along one axis, given its 3 slices: tile + 2 slices. For
  tile 4 (the CPU kernels' F(4x4, 3x3)), G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6;
  1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]."""
  if tile == 2:
    return [k0, 0.5 * (k0 + k1 + k2), 0.5 * (k0 - k1 + k2), k2]
  return [k0 / 4, -(k0 + k1 + k2) / 6, -(k0 - k1 + k2) / 6, k0 / 24 + k1 / 12 + k2 / 6,
          k0 / 24 - k1 / 12 + k2 / 6, k2]


def kernel_transform(kernel: jax.Array, tile: int = 2) -> jax.Array:
  """G g G^T of F(tile x tile, 3x3), tile 2 or 4, for a (3, 3, C, O) kernel, as elementwise adds
  (an einsum with G is far slower on XLA:CPU: bench/README.md): (tile + 2, tile + 2, C, O)."""
  rows = _g_rows(kernel[0], kernel[1], kernel[2], tile)  # each (3, C, O)
  return jnp.stack([jnp.stack(_g_rows(r[0], r[1], r[2], tile), 0) for r in rows], 0)


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, dtype=jnp.float32) -> jax.Array:
  """3x3 stride-1 'SAME' convolution, NHWC x HWIO -> NHWC, via Winograd F(2x2, 3x3).

  Args:
    x: (N, H, W, C) input.
    kernel: (3, 3, C, O) kernel.
    dtype: compute dtype (the kernel transform is done in float32 and cast).

  Returns:
    (N, H, W, O) in `dtype`.
  """
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

