"""Every convolution form equals lax.conv (values and both gradients); 'auto' picks as measured."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hinet_jax import convolution
from hinet_jax import models
from hinet_jax import sharding


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


def _value_and_grads(fn, x, k, ct):
  loss = lambda x, k: jnp.sum(fn(x, k) * ct)
  return jax.jit(lambda x, k: (fn(x, k), jax.grad(loss, (0, 1))(x, k)))(x, k)


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# (N, H, W, C, O): C < O, C > O (the two matmul branches), odd sizes, a 1-pixel-wide image.
SHAPES = [(2, 5, 7, 3, 6), (1, 6, 4, 9, 3), (2, 4, 4, 5, 5), (1, 1, 3, 2, 4)]


@pytest.mark.parametrize('impl', ['matmul', 'winograd', 'auto'])
@pytest.mark.parametrize('shape', SHAPES)
def test_conv3x3_forms_match_lax_conv(impl, shape):
  n, h, w, c, o = shape
  x, k, ct = _random((n, h, w, c), 0), _random((3, 3, c, o), 1), _random((n, h, w, o), 2)
  y, grads = _value_and_grads(lambda x, k: convolution.conv3x3(x, k, impl), x, k, ct)
  y_ref, grads_ref = _value_and_grads(convolution.conv_xla, x, k, ct)
  assert y.shape == y_ref.shape
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5


def test_pointwise_conv_matches_lax_conv():
  x, k, ct = _random((2, 5, 3, 6), 0), _random((1, 1, 6, 4), 1), _random((2, 5, 3, 4), 2)
  y, grads = _value_and_grads(
      lambda x, k: convolution.conv(x, k, 1, 0, impl='auto'), x, k, ct)
  y_ref, grads_ref = _value_and_grads(lambda x, k: convolution.conv_xla(x, k, 1, 0), x, k, ct)
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5


def test_auto_impl_policy():
  auto = lambda shape, o: convolution.auto_impl(shape, o, backend='cpu')
  # Deep levels (few pixels, many channels): matmuls.
  assert auto((2, 8, 8, 512), 512) == 'matmul'
  assert auto((1, 16, 16, 1024), 1024) == 'matmul'
  # Convs to an image (3 channels) from many: matmul + shifted adds.
  assert auto((2, 128, 128, 32), 3) == 'matmul'
  # ...but not from an image: YNNPACK is fine there.
  assert auto((2, 128, 128, 3), 32) == 'xla'
  # Middle levels: Winograd forward.
  assert auto((1, 64, 64, 256), 256) == 'winograd'
  assert auto((1, 32, 32, 128), 256) == 'winograd'
  # Large images with few channels: lax.conv.
  assert auto((1, 256, 256, 32), 32) == 'xla'
  assert auto((1, 128, 128, 128), 128) == 'xla'
  # Symbolic shapes (shape-polymorphic export) and other backends: lax.conv.
  shape = jax.export.symbolic_shape('b, 16*h, 16*w, 64')
  assert convolution.auto_impl(shape, 64, backend='cpu') == 'xla'
  assert convolution.auto_impl((2, 8, 8, 512), 512, backend='gpu') == 'xla'
  assert convolution.auto_impl((2, 8, 8, 512), 512, backend='tpu') == 'xla'


def test_unknown_impl_is_a_clear_error():
  x, k = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(ValueError, match="conv_impl must be one of.*'fft'"):
    convolution.conv(x, k, 1, 1, impl='fft')
  with pytest.raises(ValueError, match='conv_impl must be one of'):
    models.HINet(wf=4, depth=2, conv_impl='fft').init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


@pytest.mark.parametrize('impl', ['matmul', 'winograd'])
def test_hinet_forms_match_xla(impl):
  """Both stages and the parameter gradient of a whole (small) HINet."""
  x = jnp.asarray(np.random.default_rng(2).random((2, 10, 9, 3)), jnp.float32)
  ref = models.HINet(wf=4, depth=2, conv_impl='xla')
  params = models.init_params(ref, jax.random.key(0), image_size=8)

  def run(model):
    loss = lambda p: sum(jnp.sum(o**2) for o in model.apply({'params': p}, x))
    return jax.jit(lambda p: (model.apply({'params': p}, x), jax.grad(loss)(p)))(params)

  (outs, grads), (outs_ref, grads_ref) = run(ref.clone(conv_impl=impl)), run(ref)
  for a, b in zip(outs, outs_ref):
    assert _rel(a, b) < 1e-5
  # All parameter gradients as one vector: single near-zero entries (instance-norm biases whose
  # gradients cancel) differ by float32 rounding relative to themselves, not to the gradient.
  flat = lambda tree: jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(tree)])
  assert _rel(flat(grads), flat(grads_ref)) < 1e-5


@pytest.mark.parametrize('impl', ['matmul', 'winograd'])
def test_forms_run_batch_sharded_over_8_devices(impl):
  """The hand-written forms (reshapes, custom VJPs) keep working under data parallelism."""
  mesh = sharding.create_mesh()
  assert mesh.devices.size == 8
  x, k, ct = _random((8, 6, 5, 16), 0), _random((3, 3, 16, 24), 1), _random((8, 6, 5, 24), 2)
  x, ct = (jax.device_put(a, sharding.batch_sharding(mesh)) for a in (x, ct))
  k = jax.device_put(k, sharding.replicated(mesh))
  y, grads = _value_and_grads(lambda x, k: convolution.conv3x3(x, k, impl), x, k, ct)
  y_ref, grads_ref = _value_and_grads(convolution.conv_xla, x, k, ct)
  assert y.sharding.is_equivalent_to(sharding.batch_sharding(mesh), 4)
  for a, b in zip((y, *grads), (y_ref, *grads_ref)):
    assert _rel(a, b) < 1e-5


def test_inference_compiler_options_take_convs_off_ynnpack():
  """The option is accepted and changes the kernels, not the numbers."""
  options = convolution.inference_compiler_options()
  assert options  # This suite runs on the CPU backend.
  # Big enough for XLA to hand the conv to YNNPACK by default (it keeps tiny ones).
  x, k = _random((2, 32, 32, 32), 0), _random((3, 3, 32, 32), 1)
  # Two function objects: jit caches executables per function, whatever the options.
  default = jax.jit(lambda x, k: convolution.conv_xla(x, k))
  eigen = jax.jit(lambda x, k: convolution.conv_xla(x, k), compiler_options=options)
  assert 'ynn_fusion' in default.lower(x, k).compile().as_text()
  assert 'ynn_fusion' not in eigen.lower(x, k).compile().as_text()
  assert _rel(eigen(x, k), default(x, k)) < 1e-6
