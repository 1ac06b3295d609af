"""A HINet as a TF SavedModel (orbax-export / jax2tf) that restores any image size.

Written by `hinet-export --format=savedmodel` (`hinet_jax/cli/exporter.py`), the default format.

The SavedModel's `serving_default` signature takes `image`: float32 NHWC in [0, 1] of any batch,
height and width, and returns `{'restored': ...}` of the same shape (the raw network output; clip
to [0, 1] when saving).

The output may be local or `gs://...`, published whole. The padding to a multiple of
2^(depth-1) happens in TF, as `models.pad_to_multiple` does it: jax2tf cannot prove the U-Net's
skip shapes equal for a free height and width.
"""

import os
from typing import Any

from absl import logging

from hinet_jax import backends
from hinet_jax import files
from hinet_jax import models

SIGNATURE_KEY = 'serving_default'
INPUT_NAME = 'image'
OUTPUT_NAME = 'restored'
# The file TF's loader needs: published last, so its presence says the SavedModel is complete.
SAVED_MODEL_FILE = 'saved_model.pb'


def _tf_pad_indices(tf, n, pad, symmetric):
  """Source indices of numpy's bottom/right 'reflect' (period 2(n-1)) or 'symmetric' (2n) pad."""
  idx = tf.range(n + pad)
  period_r = tf.maximum(2 * (n - 1), 1)
  m_r = idx % period_r
  reflect = tf.where(m_r < n, m_r, period_r - m_r)
  m_s = idx % (2 * n)
  sym = tf.where(m_s < n, m_s, 2 * n - 1 - m_s)
  return tf.where(symmetric, sym, reflect)


def tf_pad_to_multiple(tf, image, multiple: int):
  """TF twin of `models.pad_to_multiple` for NHWC tensors of dynamic shape."""
  h, w = tf.shape(image)[1], tf.shape(image)[2]
  ph, pw = (-h) % multiple, (-w) % multiple
  symmetric = tf.logical_not(tf.logical_and(ph < h, pw < w))
  rows = _tf_pad_indices(tf, h, ph, symmetric)
  cols = _tf_pad_indices(tf, w, pw, symmetric)
  return tf.gather(tf.gather(image, rows, axis=1), cols, axis=2)


def export_saved_model(model, params: Any, output_dir: files.PathLike, *,
                       overwrite: bool = False) -> str:
  """Writes a TF SavedModel of `model` for any image size, published only when complete.

  Returns:
    The SavedModel's path (absolute, for a local one).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  import orbax.export as oex
  from orbax.export import constants
  # pylint: enable=g-import-not-at-top

  output_dir = files.new_output(output_dir, overwrite)
  multiple = model.size_multiple
  channels = model.in_chn
  # TensorFlow runs the SavedModel with its own kernels: XLA's layers are the portable form.
  model = backends.resolve('xla').build(model)
  restore = lambda p, x: models.restored_image(model.apply({'params': p}, x))
  jax_module = oex.JaxModule(params, restore,
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
  """An exported SavedModel's serving function: `fn(image=tf.Tensor) -> {'restored': ...}`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(os.fspath(saved_model_dir))
  return loaded.signatures[SIGNATURE_KEY]
