"""Defaults for every training option; the dataset configs import this and change a few fields.

Run with a dataset config, e.g.:
  python train.py --config=configs/sidd.py --workdir=/tmp/hinet_sidd
Any field can be overridden from the command line (the config is locked, so a misspelled key is an
error):  --config.batch_size=16 --config.optim.learning_rate=1e-4 --config.model.dtype=bfloat16

The optimizer fields restate the official recipe (megvii-model/HINet options/train/*/HINet*.yml):
Adam lr 2e-4, cosine annealing (`TrueCosineAnnealingLR`, T_max 400k) to eta_min, global-norm clip
0.01 (hard-coded in basicsr/models/image_restoration_model.py `optimize_parameters`), batch 8 per
GPU x 8 GPUs = 64 global, 256x256 crops, 400k iterations.
"""

import ml_collections
from ml_collections import config_dict


def folder_source(root=None, input_dir='input', target_dir='target'):
  """A `datasets.make_source('folder', ...)` spec: ROOT/input/* paired with ROOT/target/*."""
  return ml_collections.ConfigDict(dict(
      kind='folder', root=root if root is not None else config_dict.placeholder(str),
      input_dir=input_dir, target_dir=target_dir))


def dataset_source(kind, split):
  """A `datasets.make_source` config for a published dataset; the root is set on the command line."""
  return ml_collections.ConfigDict(dict(
      kind=kind, root=ml_collections.config_dict.placeholder(str), split=split))


def use_full_frame_recipe(config):
  """The GoPro/REDS/Rain13k recipe shared by their official option files.

  PSNR loss (weight 0.5) on both stages, Adam betas (0.9, 0.99), cosine to eta_min 1e-7, and
  validation on full frames through the official 256 grid with 8-bit output.
  """
  config.data.eval_batch_size = 8  # 256x256 tiles per call.
  config.loss.name, config.loss.weight = 'psnr', 0.5
  config.optim.b2, config.optim.eta_min = 0.99, 1e-7
  config.checkpoint_every_steps = 20_000
  config.eval.batched, config.eval.tile, config.eval.quantize = False, 256, True
  return config


def get_config():
  """The default training config (HINet 1x, PSNR loss, the official optimizer)."""
  config = ml_collections.ConfigDict()

  config.seed = 0  # Seeds parameter init, the data order and the augmentation.
  config.batch_size = 64  # GLOBAL batch over all devices and hosts (8/GPU x 8 GPUs upstream).
  # Micro-batches per update: k > 1 averages the gradients of k slices of each device's batch in
  # the step (the official batch on fewer devices); steps, schedule and resume count updates.
  config.grad_accum_steps = 1
  config.num_train_steps = 400_000  # Upstream `total_iter`.
  config.log_every_steps = 100  # Train scalars, progress/ETA line.
  config.eval_every_steps = 10_000  # Validation PSNR/SSIM + image panels (+ a checkpoint).
  config.checkpoint_every_steps = 5_000  # Resumable checkpoints (state + data position + config).
  # A converted/pretrained checkpoint dir (python -m hinet_jax.convert or pretrained.save_params) or another
  # training workdir to fine-tune from; used only when the workdir has no checkpoint yet.
  config.init_from = config_dict.placeholder(str)
  # TensorBoard event files in the workdir (written through tf.io.gfile: local or gs://, not a
  # storage emulator); False: metrics go to the log only.
  config.tensorboard = True

  config.data = ml_collections.ConfigDict()
  # Source specs: `kind` plus that kind's arguments (hinet_jax/data/datasets.py `make_source`).
  config.data.train = folder_source()
  config.data.val = folder_source()
  config.data.crop_size = 256  # Training crop (upstream `gt_size`); a multiple of 16.
  # 'dihedral' (uniform over the 8 flips/rotations), 'dihedral_half' (identity 50%, else one of the
  # other 7: the SIDD dataset's `random_augmentation`), or 'none'.
  config.data.augment = 'dihedral'
  config.data.num_workers = 0  # grain worker processes (keep fixed across a resume).
  config.data.num_threads = 2  # grain reader threads (per worker).
  config.data.prefetch = 8  # Read-ahead elements per reader.
  config.data.shard_by_process = True  # Each host reads a disjoint slice of the train source.
  config.data.eval_batch_size = 8  # Validation batch (per process); the last batch is padded.

  # `HINet` constructor arguments (hinet_jax/models.py); the 1x model with HIN at levels 0..4.
  config.model = ml_collections.ConfigDict(dict(
      wf=64,  # Base width: 64 for the 1x models, 32 for 0.5x.
      depth=5,  # Encoder levels (5 in every published model).
      relu_slope=0.2,  # LeakyReLU slope.
      hin_position_left=0,  # First level with half instance norm (inclusive).
      hin_position_right=4,  # Last level with half instance norm (inclusive).
      in_chn=3,  # Image channels.
      dtype='float32',  # Compute dtype: 'bfloat16' for mixed precision (losses stay float32).
      param_dtype='float32'))  # Parameter (and optimizer state) dtype.
  # How the convolutions run, a run-time choice never stored with checkpoints: 'auto' | 'xla' |
  # 'cpu' (see README "Backends"; 'auto' is 'cpu' on one CPU device, 'xla' elsewhere).
  config.backend = 'auto'

  config.loss = ml_collections.ConfigDict()
  config.loss.name = 'psnr'  # 'psnr' (PSNRLoss) or 'l1'; applied to both stages and summed.
  config.loss.weight = 0.5  # Per-stage weight (`loss_weight` upstream).

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 2e-4  # Peak Adam learning rate.
  config.optim.b1 = 0.9  # Adam beta1.
  config.optim.b2 = 0.99  # Adam beta2 (0.999 in the SIDD recipe).
  config.optim.eps = 1e-8  # Adam epsilon (torch default).
  config.optim.weight_decay = 0.0  # torch-Adam-style L2 (0 upstream).
  config.optim.eta_min = 1e-7  # Final learning rate of the cosine (1e-6 for SIDD).
  config.optim.decay_steps = -1  # Cosine period; <= 0 means num_train_steps (upstream T_max).
  config.optim.warmup_steps = 0  # Linear warm-up steps (10k for Rain13k, none otherwise).
  config.optim.grad_clip_norm = 0.01  # Global-norm clipping; <= 0 disables.

  config.train = ml_collections.ConfigDict()
  config.train.max_consecutive_nonfinite = 10  # Stop after this many skipped steps in a row.
  config.train.keep_checkpoints = 3  # Newest checkpoints kept for resuming.
  config.train.keep_best = 1  # Checkpoints with the best validation PSNR kept besides.
  config.train.async_checkpointing = True  # Write checkpoints in the background.
  config.train.profile = False  # Write a profiler trace (TensorBoard profile plugin).
  config.train.profile_first_step = 10  # First traced step.
  config.train.profile_steps = 5  # Traced steps.

  config.eval = ml_collections.ConfigDict()
  # Equal-sized validation images are evaluated in fixed-shape batches (one compile); set False
  # for images of varying size (evaluated one by one, whole or tiled).
  config.eval.batched = True
  config.eval.tile = 0  # Tile side for image-by-image validation (HINet's grid); 0: whole images.
  config.eval.crop_border = 0  # Pixels ignored at each edge by PSNR/SSIM.
  config.eval.y_channel = False  # Measure BT.601 luma (the deraining protocol) instead of RGB.
  config.eval.quantize = False  # Round outputs to 8 bits before measuring (saved-PNG protocol).
  # Validation convolutions in float32 ('highest'); 'default' takes bf16/TF32 passes on TPU/GPU.
  config.eval.precision = 'highest'
  config.eval.num_panels = 4  # Validation images shown as degraded | restored | clean.
  config.eval.panel_image = 0  # Validation item saved as WORKDIR/panel_<name>.png; -1: none.
  config.eval.nlm_baseline = False  # Also score non-local means (for the noise demo).
  config.eval.nlm_h_factor = 0.8  # NLM filter strength h = factor * estimated sigma.
  return config
