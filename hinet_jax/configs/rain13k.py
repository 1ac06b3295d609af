"""HINet on Rain13k (deraining), validated on one of the five test sets (Test100 by default).

  python train.py --config=configs/rain13k.py --workdir=/tmp/hinet_rain13k \
      --config.data.train.root=/data/Rain13k --config.data.val.root=/data/Rain13k

Expected (paper, PSNR on the Y channel, MATLAB-style): Test100 30.29, Rain100H 30.65, Rain100L
37.28, Test2800 33.91, Test1200 33.05 dB, average 33.04 dB (the abstract's "+0.3 dB" over MPRNet's
32.73). The SSIMs are in the paper's table (an image, not re-checked here). Validation measures
the Y channel on 256 tiles with 8-bit rounding, as options/train/Rain13k/HINet.yml `val` does.

Recipe (options/train/Rain13k/HINet.yml): HIN at levels 0..4, PSNR loss weight 0.5, Adam lr 2e-4
betas (0.9, 0.99), TrueCosineAnnealingLR T_max 400k eta_min 1e-7, linear warm-up 10k iterations,
grad clip 0.01 (default on), manual_seed 10, 256 crops, val every 20k.
"""

from hinet_jax.configs import default as default_lib


def get_config():
  """Rain13k config."""
  config = default_lib.get_config()
  config.seed = 10
  config.model.hin_position_left, config.model.hin_position_right = 0, 4
  config.data.train = default_lib.dataset_source('rain13k', 'train')
  config.data.val = default_lib.dataset_source('rain13k', 'Test100')
  default_lib.use_full_frame_recipe(config)
  config.optim.warmup_steps = 10_000
  config.eval_every_steps = 20_000
  config.eval.y_channel = True  # The deraining papers' PSNR/SSIM are on the Y channel.
  return config
