"""A JAX PRNG whose draws numpy makes on the host: `init_params` compiles quickly on CPU.

XLA:CPU compiles each draw of a jitted `model.init` as its own kernel (bench/README.md); host
callbacks compile at once. The model's initialisers are unchanged and take any key.
"""

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np


def _generator(key) -> np.random.Generator:
  return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _host(fn, shape, dtype, *args):
  return jax.pure_callback(fn, jax.ShapeDtypeStruct(tuple(shape), dtype), *args,
                           vmap_method='sequential')


def _seed(seed):
  seed = jnp.asarray(seed).astype(jnp.uint64 if jax.config.jax_enable_x64 else jnp.uint32)
  return jnp.stack([jnp.zeros((), jnp.uint32), seed.astype(jnp.uint32)])


def _split(key, shape):
  draw = lambda k: _generator(k).integers(0, 2**32, (*shape, 2), dtype=np.uint32)
  return _host(draw, (*shape, 2), jnp.uint32, key)


def _fold_in(key, data):
  draw = lambda k, d: _generator([*np.asarray(k).tolist(), int(d) & 0xFFFFFFFF]).integers(
      0, 2**32, 2, dtype=np.uint32)
  return _host(draw, (2,), jnp.uint32, key, jnp.asarray(data, jnp.uint32))


def _random_bits(key, bit_width, shape):
  dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}[bit_width]
  draw = lambda k: _generator(k).integers(0, np.iinfo(dtype).max, shape, dtype=dtype,
                                          endpoint=True)
  return _host(draw, shape, dtype, key)


HOST_PRNG = jax.extend.random.define_prng_impl(
    key_shape=(2,), seed=_seed, split=_split, random_bits=_random_bits, fold_in=_fold_in,
    name='hinet_jax_host', tag='host')


def key(seed: int) -> jax.Array:
  """A typed PRNG key of the host generator."""
  return jax.random.key(seed, impl=HOST_PRNG)
