"""The CPU backend computes the plain model: same parameters, same outputs and gradients.

Its fused blocks run on the C++ kernels where they build ('auto'), and on XLA's own forms
('matmul') everywhere: so the blocks' wiring is checked on a machine without a compiler too.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hinet_jax
from hinet_jax import backends
from hinet_jax import cpu
from hinet_jax import models
from hinet_jax.cpu import convolution
from hinet_jax.cpu import kernels
from hinet_jax.cpu import layers as cpu_layers

needs_kernels = pytest.mark.skipif(not kernels.available(), reason='no C++ compiler for the kernels')

# Widths from 16 to 64 channels: the 3x3 convolutions from 32 channels run as Winograd once packed.
TINY = dict(wf=16, depth=3, hin_position_left=0, hin_position_right=1)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@functools.lru_cache(maxsize=None)
def _plain():
  """The plain model, its parameters and an input, made once for every setup."""
  plain = models.create_model(**TINY)
  return plain, models.init_params(plain, 0), jax.random.uniform(jax.random.key(1), (2, 32, 40, 3))


def _setup(layers):
  plain, params, x = _plain()
  return plain, plain.clone(layers=layers), params, x


def _loss(model, p, x):
  s1, s2 = model.apply({'params': p}, x)
  return jnp.sum(s1 * s1) + jnp.sum(jnp.abs(s2 - 0.5))


def _outputs_and_grads(model, params, x):
  return (jax.jit(lambda p: model.apply({'params': p}, x))(params),
          jax.jit(jax.grad(lambda p: _loss(model, p, x)))(params))


@functools.lru_cache(maxsize=None)
def _plain_outputs_and_grads():
  plain, params, x = _plain()
  return _outputs_and_grads(plain, params, x)


@pytest.fixture(scope='module')
def setup():
  """The CPU backend's layers on its kernels."""
  if not kernels.available():
    pytest.skip('no C++ compiler for the kernels')
  return _setup(cpu.LAYERS)


@pytest.fixture(scope='module', params=['kernels', 'xla_forms'])
def any_setup(request):
  """The fused blocks on the kernels, and on XLA's forms (which need no compiler)."""
  if request.param == 'kernels':
    if not kernels.available():
      pytest.skip('no C++ compiler for the kernels')
    return _setup(cpu.LAYERS)
  return _setup(cpu_layers.layers('matmul'))


def test_same_parameter_tree(any_setup):
  plain, fused, params, _ = any_setup
  shapes = lambda m: jax.tree.map(lambda a: a.shape, models.abstract_params(m))
  assert shapes(fused) == shapes(plain)


def test_outputs_and_gradients_match_the_plain_model(any_setup):
  _, fused, params, x = any_setup
  (outs_plain, g_plain), (outs_fused, g_fused) = (_plain_outputs_and_grads(),
                                                  _outputs_and_grads(fused, params, x))
  for a, b in zip(outs_plain, outs_fused):
    assert _rel(b, a) < 1e-5
  for path, a in jax.tree_util.tree_leaves_with_path(g_plain):
    b = g_fused
    for k in path:
      b = b[k.key]
    assert _rel(b, a) < 1e-5, jax.tree_util.keystr(path)


def test_prepared_inference_matches_the_plain_model(setup):
  """Kernels packed once (Winograd-transformed from 32 channels) give the plain model's output."""
  plain, fused, params, x = setup
  prepared = cpu.prepare_inference(fused, params)
  assert jax.tree.leaves(prepared), 'nothing was packed'
  want = jax.jit(lambda p: plain.apply({'params': p}, x)[1])(params)
  got = jax.jit(lambda v: fused.apply(v, x)[1])({'params': params, **prepared})
  assert _rel(got, want) < 1e-5


def test_direct_packed_kernels_match_the_unpacked_and_are_not_differentiable(setup, monkeypatch):
  """Without Winograd, kernels packed once give the unpacked layers' output, to float rounding
  (another executable may sum in another order; a misread packed tap is off by percents);
  packed layers are for inference only."""
  _, fused, params, x = setup
  monkeypatch.setattr(convolution, 'PACKED_WINOGRAD_MIN_CHANNELS', 10**6)
  # A new trace (jit caches traces by function), which sees the patched policy.
  prepared = jax.jit(lambda p: cpu.prepare_inference.__wrapped__(fused, p))(params)
  kernels_count = sum(1 for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
                      if path[-1].key == 'kernel')
  # All but the two convolutions to the image (SAM's conv2, `last`), which run as matmuls.
  assert len(jax.tree.leaves(prepared)) == kernels_count - 2
  unpacked = jax.jit(lambda p: fused.apply({'params': p}, x))(params)
  packed = jax.jit(lambda v: fused.apply(v, x))({'params': params, **prepared})
  for a, b in zip(unpacked, packed):
    assert _rel(b, a) < 1e-5
  with pytest.raises(ValueError, match='cannot be differentiated'):
    jax.grad(lambda p: jnp.sum(fused.apply({'params': p, **prepared}, x)[1]))(params)


def test_low_memory_packing_is_smaller_and_computes_the_same(setup, monkeypatch):
  """`low_memory` packs the kernels over `COMPACT_WINOGRAD_MAX_KERNEL` directly, not by
  Winograd (lowered here, so the tiny model has both forms): fewer bytes, the plain model's
  output, in `prepare_inference` and through the `Predictor`."""
  plain, fused, params, x = setup
  monkeypatch.setattr(convolution, 'COMPACT_WINOGRAD_MAX_KERNEL', 32 * 32)
  prepare = lambda low: jax.jit(  # a new trace, which sees the patched threshold
      lambda p: cpu.prepare_inference.__wrapped__(fused, p, low))(params)
  fast, small = prepare(False), prepare(True)
  kernels_by_path = dict(jax.tree_util.tree_flatten_with_path(params)[0])

  def winograd_packed(prepared):
    return {path for path, p in jax.tree_util.tree_flatten_with_path(prepared[cpu.PACKED])[0]
            if kernels_by_path[path].shape[:2] == (3, 3)
            and kernels.winograd_tile_of(p, *kernels_by_path[path].shape[2:])}

  assert set() < winograd_packed(small) < winograd_packed(fast)
  assert sum(a.size for a in jax.tree.leaves(small)) < sum(a.size for a in jax.tree.leaves(fast))
  want = jax.jit(lambda p: plain.apply({'params': p}, x)[1])(params)
  got = jax.jit(lambda v: fused.apply(v, x)[1])({'params': params, **small})
  assert _rel(got, want) < 1e-5
  cpu_backend = backends._cpu()  # pylint: disable=protected-access  (resolve: 8 test devices)
  predictor = hinet_jax.Predictor(fused, params, backend=cpu_backend, low_memory=True)
  assert winograd_packed(predictor.variables) == winograd_packed(small)
  assert _rel(predictor.predict(x), want) < 1e-5


def test_backend_names():
  assert backends.resolve('xla').layers == models.XLA_LAYERS
  with pytest.raises(ValueError, match='auto'):
    backends.resolve('gpu')
  # The tests run on 8 host devices: the C++ kernels run on one, so 'auto' is XLA's.
  assert backends.resolve('auto').name == 'xla'
  with pytest.raises(ValueError, match='8 devices'):
    backends.resolve('cpu')


def test_predictor_holds_the_packed_kernels_alone(setup):
  """A Predictor on the CPU backend keeps each packed kernel's raw form as its shape only, and
  restores as the plain model does."""
  plain, fused, params, x = setup
  cpu_backend = backends._cpu()  # pylint: disable=protected-access  (resolve: 8 test devices)
  predictor = hinet_jax.Predictor(fused, params, backend=cpu_backend)
  held = predictor.variables['params']
  packed_paths = {path for path, _ in jax.tree_util.tree_flatten_with_path(
      predictor.variables[cpu.PACKED])[0]}
  assert packed_paths
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      held, is_leaf=lambda a: isinstance(a, backends.Shape))[0]:
    assert isinstance(leaf, backends.Shape) == (path in packed_paths), jax.tree_util.keystr(path)
  want = jax.jit(lambda p: plain.apply({'params': p}, x)[1])(params)
  assert _rel(predictor.predict(x), want) < 1e-5
