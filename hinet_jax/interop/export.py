"""Export a checkpoint as a TF SavedModel (orbax-export / jax2tf) that restores any image size.

  python -m hinet_jax.export --checkpoint=DIR --output=DIR [--which=best] [--overwrite]

The SavedModel's `serving_default` signature takes `image`: float32 NHWC in [0, 1] of any batch,
height and width, and returns `{'restored': ...}` of the same shape (the raw network output; clip
to [0, 1] when saving).

Why the padding lives in TF: jax2tf cannot prove the U-Net's skip shapes equal for a free
"b, h, w, 3" input (stride-2 down then x2 up gives 2*floor(h/2)), so the JAX function is exported
for "b, M*h, M*w, 3" with M = 2^(depth-1), and the serving function pads to a multiple of M and
crops back in TF. It pads exactly as `models.pad_to_multiple` (bottom/right; reflect, or symmetric
when a pad is not smaller than its side), so the model's own padding is a no-op and the SavedModel
output equals `model.apply` on the unpadded image.

The output may be local or on object storage (`gs://...`): the SavedModel is built in a local
staging folder and published whole, `saved_model.pb` last (TF refuses a folder without it), so a
failed export never leaves a partial SavedModel nor replaces a good one.

TensorFlow and orbax-export are imported inside the functions that need them only.
"""

import os
from typing import Any

from absl import app
from absl import flags
from absl import logging

from hinet_jax import backends
from hinet_jax import errors
from hinet_jax import files

SIGNATURE_KEY = 'serving_default'
INPUT_NAME = 'image'
OUTPUT_NAME = 'restored'
# The file TF's loader needs: published last, so its presence says the SavedModel is complete.
SAVED_MODEL_FILE = 'saved_model.pb'


def make_apply_fn(model):
  """`apply_fn(params, x) -> restored x` (HINet's stage 2), the function jax2tf converts."""

  def apply_fn(params, x):
    out = model.apply({'params': params}, x)
    return out[-1] if isinstance(out, (tuple, list)) else out

  return apply_fn


def _tf_pad_indices(tf, n, pad, symmetric):
  """Source indices numpy's bottom/right 'reflect' or 'symmetric' padding reads, any pad size.

  Repeated reflection is periodic: period 2(n-1) for reflect (edge not repeated), 2n for
  symmetric (edge repeated), which is what numpy and jnp do for pads larger than the side.
  """
  idx = tf.range(n + pad)
  period_r = tf.maximum(2 * (n - 1), 1)
  m_r = idx % period_r
  reflect = tf.where(m_r < n, m_r, period_r - m_r)
  m_s = idx % (2 * n)
  sym = tf.where(m_s < n, m_s, 2 * n - 1 - m_s)
  return tf.where(symmetric, sym, reflect)


def tf_pad_to_multiple(tf, image, multiple: int):
  """TF twin of `models.pad_to_multiple` for NHWC tensors of dynamic shape.

  Args:
    tf: the tensorflow module.
    image: (B, H, W, C) tensor.
    multiple: the multiple (2^(depth-1)).

  Returns:
    (B, H', W', C) with H', W' the next multiples, padded at the bottom/right.
  """
  h, w = tf.shape(image)[1], tf.shape(image)[2]
  ph, pw = (-h) % multiple, (-w) % multiple
  # Same rule as the model: reflect needs pad < side on both axes, else symmetric on both.
  symmetric = tf.logical_not(tf.logical_and(ph < h, pw < w))
  rows = _tf_pad_indices(tf, h, ph, symmetric)
  cols = _tf_pad_indices(tf, w, pw, symmetric)
  return tf.gather(tf.gather(image, rows, axis=1), cols, axis=2)


def export_saved_model(model, params: Any, output_dir: files.PathLike, *,
                       overwrite: bool = False) -> str:
  """Writes a TF SavedModel of `model` with a `serving_default` signature for any image size.

  The SavedModel is built in a staging folder and published only when complete
  (`files.staged_dir`).

  Args:
    model: a `models.HINet`.
    params: its parameters.
    output_dir: destination directory, local or `gs://...`; must not exist unless `overwrite`.
    overwrite: replace an existing `output_dir`.

  Returns:
    The path of the SavedModel (absolute, for a local one).

  Raises:
    FileExistsError: `output_dir` exists and `overwrite` is False.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  import orbax.export as oex
  from orbax.export import constants
  # pylint: enable=g-import-not-at-top

  output_dir = os.path.abspath(output_dir) if files.is_local(output_dir) else os.fspath(output_dir)
  if files.exists(output_dir) and not overwrite:
    raise errors.OutputExistsError(f'{output_dir} already exists; choose another --output or pass '
                                   '--overwrite to replace it.')
  multiple = 2**(model.depth - 1)
  channels = model.in_chn
  # TensorFlow runs the SavedModel with its own kernels: XLA's layers are the portable form.
  model = backends.resolve('xla').build(model)
  jax_module = oex.JaxModule(params, make_apply_fn(model),
                         input_polymorphic_shape=f'b, {multiple}*h, {multiple}*w, {channels}')
  core = jax_module.methods[constants.DEFAULT_METHOD_KEY]
  spec = tf.TensorSpec([None, None, None, channels], tf.float32, name=INPUT_NAME)

  @tf.function(input_signature=[spec])
  def serve(image):
    h, w = tf.shape(image)[1], tf.shape(image)[2]
    restored = core(tf_pad_to_multiple(tf, image, multiple))
    return {OUTPUT_NAME: restored[:, :h, :w, :]}

  serving_config = oex.ServingConfig(SIGNATURE_KEY, input_signature=[spec])
  manager = oex.ExportManager(jax_module, [serving_config])
  with files.staged_dir(output_dir, marker=SAVED_MODEL_FILE) as staging:
    manager.save(staging, signature_overrides={SIGNATURE_KEY: serve})
  logging.info('Wrote SavedModel %s (signature %r: %s float32 NHWC [0, 1] -> %s).', output_dir,
               SIGNATURE_KEY, INPUT_NAME, OUTPUT_NAME)
  return output_dir


def load_serving_fn(saved_model_dir: str):
  """Loads an exported SavedModel's serving function: `fn(image=tf.Tensor) -> {'restored': ...}`.

  TensorFlow reads the folder through tf.io.gfile: local, or `gs://...` with real credentials.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(os.fspath(saved_model_dir))
  return loaded.signatures[SIGNATURE_KEY]


def define_flags():
  """Defines the CLI flags (only when run as a script, so importing this module adds none)."""
  flags.DEFINE_string('checkpoint', None,
                      'Converted checkpoint dir (model_config.json + params/) or training workdir.')
  flags.DEFINE_enum('which', 'latest', ['latest', 'best'],
                    'For a training workdir: its latest or best checkpoint.')
  flags.DEFINE_string('output', None, 'Directory to write the SavedModel to.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output directory.')
  flags.mark_flags_as_required(['checkpoint', 'output'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from hinet_jax import api  # pylint: disable=g-import-not-at-top
  cfg = flags.FLAGS
  if not files.is_dir(cfg.checkpoint):
    raise app.UsageError(f'--checkpoint={cfg.checkpoint} does not exist or is not a folder.')
  if files.exists(cfg.output) and not cfg.overwrite:
    raise app.UsageError(f'--output={cfg.output} already exists; pass --overwrite to replace it.')
  model, params = api.load_pretrained(cfg.checkpoint, which=cfg.which, backend='xla')
  path = export_saved_model(model, params, cfg.output, overwrite=cfg.overwrite)
  print(f'Exported {cfg.checkpoint} to {path}: '
        f'tf.saved_model.load(path).signatures[{SIGNATURE_KEY!r}]({INPUT_NAME}=x)[{OUTPUT_NAME!r}]')
