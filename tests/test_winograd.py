"""Winograd F(2x2, 3x3) conv matches lax.conv (values and gradients) in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hinet_jax.winograd import winograd_conv3x3


def _ref(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize('shape', [(2, 7, 9, 5, 6), (1, 8, 8, 16, 3), (1, 1, 3, 2, 4)])
def test_forward_and_grads_match_lax_conv(shape):
  n, h, w, c, o = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, c)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, c, o)), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((n, h, w, o)), jnp.float32)
  loss = lambda f: (lambda x, k: jnp.sum(f(x, k) * ct))
  both = lambda f: jax.jit(lambda x, k: (f(x, k), jax.grad(loss(f), (0, 1))(x, k)))(x, k)
  (yw, gw), (yr, gr) = both(winograd_conv3x3), both(_ref)
  for a, b in zip((yw, *gw), (yr, *gr)):
    assert _rel(a, b) < 1e-5
