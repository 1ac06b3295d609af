"""Export the restore function as serialized StableHLO (`jax.export`) that needs only JAX to run.

The output folder holds
  `restore.jax_exported`  `jax.export.Exported.serialize()` of `restore(weights, image)`, lowered
                          for cpu, cuda and tpu, with a symbolic batch, height and width;
  `weights.npz`           the weights `w000, w001, ...` in the order `restore` takes them;
  `export_info.json`      the model config, dtype, JAX version and calling convention.

`image` is float32 NHWC in [0, 1] of any size; the reflect padding to a multiple of 2^(depth-1)
is inside the graph, so the loader passes images as they are:

  exp = jax.export.deserialize(open(f'{d}/restore.jax_exported', 'rb').read())
  with np.load(f'{d}/weights.npz') as z:
    weights = [z[f'w{i:03d}'] for i in range(len(z.files))]
  restored = exp.call(weights, image)
"""

import io
import json
import os
from typing import Any, Optional, Sequence, Tuple

from absl import logging
import jax
from jax import export
import jax.numpy as jnp
import numpy as np

from hinet_jax import backends
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models

EXPORTED_FILE = 'restore.jax_exported'  # Published last: its presence says the export is whole.
WEIGHTS_FILE = 'weights.npz'
INFO_FILE = 'export_info.json'
PLATFORMS = ('cpu', 'cuda', 'tpu')
DTYPES = ('float32', 'bfloat16')


def _reflect_rows(n: jax.Array, size: Any) -> jax.Array:
  """Source rows of numpy's 'reflect' pad of `n` rows to `size` at the bottom (period 2(n-1))."""
  period = jnp.maximum(2 * (n - 1), 1)
  m = jnp.arange(size) % period
  return jnp.where(m < n, m, period - m)


def _symmetric_rows(n: jax.Array, size: Any) -> jax.Array:
  """Source rows of numpy's 'symmetric' pad of `n` rows to `size` at the bottom (period 2n)."""
  m = jnp.arange(size) % (2 * n)
  return jnp.where(m < n, m, 2 * n - 1 - m)


def pad_to_multiple(image: jax.Array, multiple: int) -> jax.Array:
  """`models.pad_to_multiple` as gathers, which lower for a symbolic height and width.

  The padded size is `multiple * ceil(h / multiple)`, a form the model's own padding check can
  prove divisible; numpy's mode (reflect, or symmetric where the image is smaller than its
  padding) becomes a `where` on the sizes as values.
  """
  h, w = image.shape[1:3]
  hp, wp = multiple * ((h + multiple - 1) // multiple), multiple * ((w + multiple - 1) // multiple)
  n_h, n_w = jnp.asarray(h), jnp.asarray(w)
  symmetric = jnp.logical_or(jnp.asarray(hp - h) >= n_h, jnp.asarray(wp - w) >= n_w)
  rows = jnp.where(symmetric, _symmetric_rows(n_h, hp), _reflect_rows(n_h, hp))
  cols = jnp.where(symmetric, _symmetric_rows(n_w, wp), _reflect_rows(n_w, wp))
  return jnp.take(jnp.take(image, rows, axis=1), cols, axis=2)


def stored_weights(params: Any, dtype: str) -> Tuple[list, Any]:
  """`(weights, treedef)`: the flat numpy weights as `weights.npz` holds them, bfloat16 ones as
  their uint16 bits (numpy cannot save bfloat16), and the tree to rebuild the params from."""
  leaves, treedef = jax.tree.flatten(params)
  if dtype == 'float32':
    return [np.asarray(x, np.float32) for x in leaves], treedef
  return [np.asarray(jnp.asarray(x, jnp.bfloat16)).view(np.uint16) for x in leaves], treedef


def make_restore_fn(model: models.HINet, treedef: Any):
  """`restore(weights, image) -> restored image` (stage 2), the function that is exported."""
  multiple = model.size_multiple

  def restore(weights, image):
    weights = [jax.lax.bitcast_convert_type(w, jnp.bfloat16) if w.dtype == jnp.uint16 else w
               for w in weights]
    params = jax.tree.unflatten(treedef, weights)
    h, w = image.shape[1:3]
    restored = model.apply({'params': params}, pad_to_multiple(image, multiple))[-1]
    return restored[:, :h, :w, :]

  return restore


def export_restore(model: models.HINet, params: Any, *, dtype: str = 'float32',
                   platforms: Sequence[str] = PLATFORMS,
                   local_stats: Optional[int] = None) -> Tuple[export.Exported, list]:
  """Exports `model`'s restore function for any batch, height and width.

  Args:
    model: the HINet (any backend: it is rebuilt on XLA's layers, the portable form).
    params: its parameters.
    dtype: 'float32', or 'bfloat16' for bfloat16 weights and compute (input and output stay
      float32).
    platforms: the platforms lowered for, all here on the host: the C++ kernels' custom calls
      could not lower for an accelerator, so a success shows none is inside.
    local_stats: a window for TLC's local statistics (`models.with_local_stats`), or None.

  Returns:
    `(exported, weights)`: `exported.call(weights, image)` restores float32 NHWC `image`.
  """
  if dtype not in DTYPES:
    raise errors.InvalidInputError(f'--dtype={dtype}: StableHLO exports one of {DTYPES}.')
  config = dict(models.model_config(model), dtype=dtype, param_dtype=dtype)
  model = backends.resolve('xla').build(models.create_model(**config))
  if local_stats:
    model = models.with_local_stats(model, local_stats)
  weights, treedef = stored_weights(params, dtype)
  image = jax.ShapeDtypeStruct(export.symbolic_shape(f'b, h, w, {model.in_chn}'), jnp.float32)
  specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in weights]
  exported = export.export(jax.jit(make_restore_fn(model, treedef)),
                           platforms=tuple(platforms))(specs, image)
  return exported, weights


def export_info(model: models.HINet, exported: export.Exported, dtype: str,
                local_stats: Optional[int] = None) -> dict:
  """What `export_info.json` records: enough to use the artifact without this package."""
  return dict(format='jax.export', function='restore(weights, image) -> restored',
              model_config=models.model_config(model), dtype=dtype, local_stats=local_stats,
              input='float32 NHWC in [0, 1], any batch, height and width',
              output='float32 NHWC, the input shape (clip to [0, 1] to save)',
              platforms=list(exported.platforms),
              calling_convention_version=exported.calling_convention_version,
              jax_version=jax.__version__, weights=f'{WEIGHTS_FILE}: w000, w001, ... in call order')


def export_stablehlo(model: models.HINet, params: Any, output_dir: files.PathLike, *,
                     dtype: str = 'float32', overwrite: bool = False,
                     local_stats: Optional[int] = None) -> str:
  """Writes the StableHLO export of `model` to `output_dir` (local or gs://), published whole.

  Returns:
    The folder's path (absolute, for a local one).
  """
  output_dir = files.new_output(output_dir, overwrite)
  exported, weights = export_restore(model, params, dtype=dtype, local_stats=local_stats)
  buffer = io.BytesIO()
  np.savez(buffer, **{f'w{i:03d}': w for i, w in enumerate(weights)})
  with files.staged_dir(output_dir, marker=EXPORTED_FILE) as staging:
    files.write_bytes(os.path.join(staging, WEIGHTS_FILE), buffer.getvalue())
    files.write_text(os.path.join(staging, INFO_FILE),
                     json.dumps(export_info(model, exported, dtype, local_stats), indent=2))
    files.write_bytes(os.path.join(staging, EXPORTED_FILE), exported.serialize())
  logging.info('Wrote StableHLO %s (%s, platforms %s).', output_dir, dtype, exported.platforms)
  return output_dir
