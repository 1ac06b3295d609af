"""HINet on REDS (deblurring with JPEG artifacts; NTIRE 2021 Image Deblurring track 2).

8 GPUs, the official batch (global 64 crops of 256 = 8 per device):
  python train.py --config=configs/reds.py --workdir=/tmp/hinet_reds \
      --config.data.train.root=/data/REDS --config.data.val.root=/data/REDS
1 GPU, the same batch as 8 micro-batches of 8 per update: add --config.grad_accum_steps=8 (2 GPUs:
4). A micro-batch of the 1x model takes about 7.1 GB in float32 or 4.2 GB in bfloat16 (XLA's count
for an 8x256x256 train step on an H200, bench/README.md), plus 0.35 GB of gradient sum.

Expected (paper, REDS val-300: frames 9, 19, ..., 99 of the 30 validation sequences, RGB): 28.83 dB
PSNR / 0.862 SSIM (the value quoted in this project's brief; not re-checked against the paper's
table, which is an image). The challenge entry scored 29.70 dB on the test server.

Recipe (options/train/REDS/HINet.yml): HIN at levels 3..4, PSNR loss weight 0.5, Adam lr 2e-4 betas
(0.9, 0.99), TrueCosineAnnealingLR T_max 400k eta_min 1e-7, no warm-up, grad clip 0.01 (default on),
manual_seed 100, 256 crops, val every 40k on 256 tiles (`grids`).
"""

from hinet_jax.configs import default as default_lib


def get_config():
  """REDS config."""
  config = default_lib.get_config()
  config.seed = 100
  config.model.hin_position_left, config.model.hin_position_right = 3, 4
  config.data.train = default_lib.dataset_source('reds', 'train')
  config.data.val = default_lib.dataset_source('reds', 'val_300')
  default_lib.use_full_frame_recipe(config)
  config.eval_every_steps = 40_000
  return config
