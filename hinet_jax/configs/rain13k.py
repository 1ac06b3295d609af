"""HINet on Rain13k (deraining), validated on the five test sets and their mean.

8 GPUs, the official batch (global 64 crops of 256 = 8 per device):
  python train.py --config=configs/rain13k.py --workdir=/tmp/hinet_rain13k \
      --config.data.train.root=/data/Rain13k --config.data.val.root=/data/Rain13k
1 GPU, the same batch as 8 micro-batches of 8 per update: add --config.grad_accum_steps=8.
Validate on fewer sets with e.g. --config.data.val.sets="('Test100',)".

Expected (paper, PSNR on the Y channel, MATLAB-style): Test100 30.29, Rain100H 30.65, Rain100L
37.28, Test2800 33.91, Test1200 33.05 dB, average 33.04 dB (the abstract's "+0.3 dB" over MPRNet's
32.73). The SSIMs are in the paper's table (an image, not re-checked here). Validation measures
the Y channel on 256 tiles with 8-bit rounding, as options/train/Rain13k/HINet.yml `val` does,
on all five sets: the official training script (basicsr/train_rain.py) validates each set (mean
over its images) and reports the plain mean of the five set means.

Recipe (options/train/Rain13k/HINet.yml): HIN at levels 0..4, PSNR loss weight 0.5, Adam lr 2e-4
betas (0.9, 0.99), TrueCosineAnnealingLR T_max 400k eta_min 1e-7, linear warm-up 10k iterations,
grad clip 0.01 (default on), manual_seed 10, 256 crops, val every 20k.
"""

import ml_collections

from hinet_jax.configs import default as default_lib

# layouts.RAIN13K_TEST_SETS, in basicsr/train_rain.py's order (configs import no library code).
TEST_SETS = ('Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200')


def get_config():
  """Rain13k config."""
  config = default_lib.get_config()
  config.seed = 10
  config.model.hin_position_left, config.model.hin_position_right = 0, 4
  config.data.train = default_lib.dataset_source('rain13k', 'train')
  # One validation source per test set (`datasets.create_val_sources`), under one root.
  config.data.val = ml_collections.ConfigDict(dict(
      kind='rain13k', root=ml_collections.config_dict.placeholder(str), sets=TEST_SETS))
  default_lib.use_full_frame_recipe(config)
  config.optim.warmup_steps = 10_000
  config.eval_every_steps = 20_000
  config.eval.y_channel = True  # The deraining papers' PSNR/SSIM are on the Y channel.
  return config
