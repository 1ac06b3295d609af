"""Whether the CPU backend computes a given HINet: its fused blocks are rewrites of the plain ones,
so an edit to `hinet_jax.models` they do not follow must send the model to XLA's layers, never
run the old block silently.

Three checks, cheapest first: float32 compute (the kernels' only dtype); the model's parts have
fused twins (`layers.layers_for`) and its blocks no fields the twins ignore; and the blocks, as
the model builds them, compute the same outputs and gradients as their twins on small inputs.
The last catches an edit to any block's or layer's code; its verdict is kept on disk per
version of that code (`kernels.cache_dir()`).
"""

import dataclasses
import functools
import hashlib
import inspect
import pathlib
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hinet_jax import files
from hinet_jax import models
from hinet_jax.cpu import convolution
from hinet_jax.cpu import kernels
from hinet_jax.cpu import layers as cpu_layers
from hinet_jax.cpu import selftest

Array = jax.Array

# What the fused blocks were written for: the plain blocks' fields as of their writing.
_HANDLED_FIELDS = {
    models.ConvBlock: {'features', 'downsample', 'relu_slope', 'use_hin', 'use_csff', 'dtype',
                       'param_dtype', 'conv', 'norm'},
    models.UpBlock: {'features', 'relu_slope', 'dtype', 'param_dtype', 'conv', 'up_conv', 'block'},
}
# Relative L2 difference allowed between a plain block and its twin: the kernels' own bound.
TOLERANCE = selftest.TOLERANCE


def why_not_supported(model: models.HINet) -> Optional[str]:
  """None if the CPU backend computes `model`, else why not (for one log line).

  Args:
    model: a HINet with the plain parts (`models.XLA_LAYERS`, or another norm).
  """
  if jnp.dtype(model.dtype) != jnp.float32:
    return f'the C++ kernels compute in float32, the model in {jnp.dtype(model.dtype).name}'
  if cpu_layers.layers_for(model.layers) is None:
    return f'its layers {model.layers} are not the plain ones the CPU backend has twins of'
  for block in (models.ConvBlock, models.UpBlock):
    unknown = {f.name for f in dataclasses.fields(block)} - _HANDLED_FIELDS[block] - {
        'parent', 'name'}
    if unknown:
      return f'{block.__name__} has fields the fused block ignores: {", ".join(sorted(unknown))}'
  return _cached_verdict(model.layers, model.relu_slope)


def _source_key(plain: models.Layers, relu_slope: float) -> Optional[str]:
  """A hash of everything the block check depends on: the code of `hinet_jax.models` and of the
  CPU layers, the parts' code, `relu_slope` and jax's version. None if a part's code cannot be
  read (defined interactively): then the check is not cached on disk."""
  sources = sorted(pathlib.Path(models.__file__).parent.glob('*.py')) + [
      pathlib.Path(cpu_layers.__file__), pathlib.Path(convolution.__file__), pathlib.Path(__file__)]
  digest = hashlib.sha256(f'{relu_slope!r} {jax.__version__}'.encode())
  for path in sources:
    digest.update(path.read_bytes())
  for field in dataclasses.fields(plain):
    part = getattr(plain, field.name)
    # A part given as a value (`models.LocalStats(window, wf)`) counts by its class and value.
    if not inspect.isclass(part) and dataclasses.is_dataclass(part):
      digest.update(repr(part).encode())
      part = type(part)
    try:
      digest.update(f'{part.__module__}.{part.__qualname__}'.encode())
      digest.update(inspect.getsource(part).encode())
    except (AttributeError, OSError, TypeError):
      return None
  return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _cached_verdict(plain: models.Layers, relu_slope: float) -> Optional[str]:
  """`_blocks_differ`, remembered on disk by `_source_key`: the check costs a compile, so it runs
  once per edit of the code, not once per process."""
  key = _source_key(plain, relu_slope)
  record = None if key is None else kernels.cache_dir() / 'model_checks' / key
  if record is not None and record.exists():
    verdict = record.read_text()
    return verdict or None
  verdict = _blocks_differ(plain, relu_slope)
  if record is not None:
    files.write_text(record, verdict or '')
  return verdict


def _block_pairs(plain: models.Layers, fused: models.Layers, relu_slope: float):
  """(name, plain block, fused block, inputs) for each kind of block HINet builds: an encoder
  block with every option, the last encoder level's and the decoder's plain body, an up block."""
  rng = np.random.default_rng(0)
  r = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  out = []
  for name, kw, inputs in [
      ('encoder block (HIN, CSFF, downsample)',
       dict(downsample=True, use_hin=True, use_csff=True), (r(1, 8, 8, 8), r(1, 8, 8, 16),
                                                            r(1, 8, 8, 16))),
      ('plain block', {}, (r(1, 8, 8, 8),))]:
    make = lambda p, kw=kw: p.block(16, relu_slope=relu_slope, conv=p.conv, norm=p.norm, **kw)
    out.append((name, make(plain), make(fused), inputs))
  make = lambda p: p.up_block(16, relu_slope, conv=p.conv, up_conv=p.up_conv, block=p.block)
  out.append(('up block', make(plain), make(fused), (r(1, 4, 4, 32), r(1, 8, 8, 16))))
  return out


def _outputs_and_grads(block: nn.Module, params, inputs):
  def f(params, inputs):
    return block.apply({'params': params}, *inputs)

  outs, vjp = jax.vjp(f, params, inputs)
  cotangents = jax.tree.map(lambda o: jnp.cos(jnp.arange(o.size, dtype=o.dtype)).reshape(o.shape),
                            outs)
  return outs, vjp(cotangents)


def _rel_error(got, want) -> Array:
  """The largest relative L2 difference over the leaves; inf for other outputs."""
  if jax.tree.structure(got) != jax.tree.structure(want):
    return jnp.asarray(jnp.inf)
  norm = lambda a: jnp.sqrt(jnp.sum(jnp.square(a)))
  return jnp.max(jnp.stack([norm(a - b) / jnp.maximum(norm(b), 1e-30)
                            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want))]))


def _blocks_differ(plain: models.Layers, relu_slope: float) -> Optional[str]:
  pairs = _block_pairs(plain, cpu_layers.layers_for(plain), relu_slope)
  rng = np.random.default_rng(1)
  all_params = []
  for name, plain_block, fused_block, inputs in pairs:
    shapes = lambda m, inputs=inputs: jax.eval_shape(m.init, jax.random.key(0), *inputs)['params']
    if jax.tree.map(lambda a: a.shape, shapes(fused_block)) != jax.tree.map(
        lambda a: a.shape, shapes(plain_block)):
      return f'its {name} has other parameters than the fused one'
    # Drawn here: XLA:CPU compiles each random draw inside a jit slowly (`models.host_random`).
    all_params.append(jax.tree.map(
        lambda a: (0.3 * rng.standard_normal(a.shape)).astype(a.dtype), shapes(plain_block)))

  @jax.jit
  def errors(all_params):  # One executable for every pair: compiling is most of the check's time.
    return jnp.stack([
        _rel_error(_outputs_and_grads(fused_block, params, inputs),
                   _outputs_and_grads(plain_block, params, inputs))
        for (_, plain_block, fused_block, inputs), params in zip(pairs, all_params)])

  for (name, *_), error in zip(pairs, np.asarray(errors(all_params))):
    if not error <= TOLERANCE:
      return f'its {name} computes other values than the fused one (relative difference {error:.2g})'
  return None
