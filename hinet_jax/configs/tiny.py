"""A seconds-long smoke run on the demo data (used by the tests; handy to check an install).

  python train.py --config=configs/tiny.py --workdir=/tmp/hinet_tiny

A width-8, depth-2 HINet (the smallest U-Net with a down and an up path) on 32x32 crops, 60
steps, validation on the 128x128 tiles of one held-out photo. It only proves that the pipeline
runs; expect a small PSNR gain over the input, nothing more.
"""

import ml_collections

from hinet_jax.configs import default as default_lib


def get_config():
  """Tiny config."""
  config = default_lib.get_config()
  config.batch_size = 8
  config.num_train_steps = 60
  config.log_every_steps = 5
  config.eval_every_steps = 30
  config.checkpoint_every_steps = 10
  config.data.train = ml_collections.ConfigDict(dict(
      kind='demo', split='train', degradation='noise', sigma=25.0, seed=0, repeats=4))
  config.data.val = ml_collections.ConfigDict(dict(
      kind='demo', split='val', degradation='noise', sigma=25.0, seed=0, val_crop=128,
      images=('coins',)))
  config.data.crop_size = 32
  config.data.prefetch = 2
  config.data.eval_batch_size = 8
  config.model.wf = 8
  config.model.depth = 2
  config.model.hin_position_left, config.model.hin_position_right = 0, 1
  config.optim.learning_rate = 1e-3
  config.optim.grad_clip_norm = 1.0
  config.eval.num_panels = 2
  config.train.keep_checkpoints = 2
  config.tensorboard = False  # Metrics to the log: a run skips TensorFlow's import.
  return config
