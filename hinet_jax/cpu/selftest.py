"""The C++ kernels' self-test: every product they compute against XLA's, on the building CPU.

`kernels` runs it once per build and refuses kernels that fail it: a wrong build costs speed,
never results. The cases are HINet's layers at small sizes that reach each code path.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Relative L2 error allowed per product: float32 rounding is ~1e-6, a wrong tap of order 1.
TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Result:
  """The verdict: `passed`, and the `worst` (relative error, product name)."""

  passed: bool
  worst: tuple[float, str]


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _conv(x, w, s=1, p=1):
  return jax.lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _upconv(x, w):
  return jax.lax.conv_transpose(x, jnp.flip(w, (0, 1)), (2, 2), 'VALID',
                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _cases(ck) -> list[tuple[str, Callable, Callable]]:
  """(name, kernels' result, XLA's result) pairs of thunks. `ck` is `hinet_jax.cpu.kernels`."""
  rng = np.random.default_rng(0)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  cases = []
  # (x shape, kernel side, stride, padding, outputs): vector tails, 4x4/2, 1x1, 256, 3 outputs.
  for shape, k, s, p, o in [((2, 9, 11, 13), 3, 1, 1, 40), ((1, 10, 8, 16), 4, 2, 1, 32),
                            ((2, 9, 7, 20), 1, 1, 0, 33), ((2, 5, 6, 256), 3, 1, 1, 48),
                            ((2, 20, 16, 32), 3, 1, 1, 3)]:
    x, w = r(*shape), r(k, k, shape[-1], o)
    y, vjp = jax.vjp(lambda x, w, s=s, p=p: _conv(x, w, s, p), x, w)
    g = r(*y.shape)
    name = f'conv {k}x{k}/{s} {shape}->{o}'
    cases.append((name + ' forward', lambda x=x, w=w, s=s, p=p: ck.conv_forward(x, w, s, p),
                  lambda y=y: y))
    cases.append((name + ' gradients', lambda x=x, g=g, w=w, s=s, p=p: ck.conv_grads(x, g, w, s, p),
                  lambda vjp=vjp, g=g: vjp(g)))
    cases.append((name + ' packed', lambda x=x, w=w, s=s, p=p: ck.conv_forward(
        x, w, s, p, packed=ck.pack_kernel(w)), lambda y=y: y))
  # The decoder's block: its input joined from two arrays, bias, LeakyReLU and a residual fused.
  x1, x2, wj, b, res = r(1, 12, 10, 32), r(1, 12, 10, 16), r(3, 3, 48, 32), r(32), r(1, 12, 10, 32)
  fused = jax.nn.leaky_relu(_conv(jnp.concatenate([x1, x2], -1), wj) + b, 0.2) + res
  cases.append(('conv joined + bias, LeakyReLU, residual', lambda: ck.conv_forward(
      x1, wj, 1, 1, bias=b, relu_slope=0.2, residual=res, x2=x2), lambda: fused))
  cases.append(('winograd joined + bias, LeakyReLU, residual', lambda: ck.winograd_conv(
      x1, ck.pack_winograd(wj, 4), 32, bias=b, relu_slope=0.2, residual=res, x2=x2),
                lambda: fused))
  # The 2x2/stride-2 upsample: a convolution's input gradient, kernel stored 'HWOI'.
  xu, wu = r(2, 6, 5, 24), r(2, 2, 24, 40)
  yu, vjpu = jax.vjp(_upconv, xu, wu)
  gu = r(*yu.shape)
  cases.append(('upconv 2x2/2 forward', lambda: ck.conv_input_grad(xu, wu, yu.shape, 2, 0, 'HWOI'),
                lambda: yu))
  cases.append(('upconv 2x2/2 gradients',
                lambda: ck.transposed_conv_grads(xu, gu, wu, 2, 0, 'HWOI'), lambda: vjpu(gu)))
  # Winograd, one chunk of tiles and several, each tile size, joined and fused at inference.
  for shape, o in [((1, 7, 9, 32), 48), ((1, 41, 37, 32), 32)]:
    x, w = r(*shape), r(3, 3, shape[-1], o)
    y, vjp = jax.vjp(_conv, x, w)
    g = r(*y.shape)
    for tile in (2, 4):
      name = f'winograd F({tile}x{tile}) {shape}->{o}'
      cases.append((name + ' forward', lambda x=x, w=w, o=o, t=tile: ck.winograd_conv(
          x, ck.pack_winograd(w, t), o), lambda y=y: y))
      cases.append((name + ' gradients', lambda x=x, g=g, w=w, t=tile: ck.winograd_conv_grads(
          x, g, w, t), lambda vjp=vjp, g=g: vjp(g)))
  return cases


def run(ck) -> Result:
  """The `Result` of every case on `ck` (`hinet_jax.cpu.kernels`); raising counts as failing."""
  worst = (0.0, '')
  # Concrete values even when the first use of the kernels comes while a function is traced.
  with jax.ensure_compile_time_eval():
    for name, got, want in _cases(ck):
      try:
        errors = [_rel(a, b) for a, b in zip(jax.tree.leaves(got()), jax.tree.leaves(want()))]
        error = max(errors) if errors else float('inf')
      except Exception as e:  # pylint: disable=broad-except  # any failure refuses the kernels
        return Result(False, (float('inf'), f'{name}: {type(e).__name__}: {e}'))
      if not error <= worst[0]:
        worst = (error, name)
  return Result(worst[0] <= TOLERANCE, worst)
