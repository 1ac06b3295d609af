"""HINet on GoPro (motion deblurring), trained on the official 512x512 crops.

Prepare the training crops once (writes /data/GoPro/train/{blur_crops,sharp_crops}):
  python -m hinet_jax.prepare_gopro --input_dir=/data/GoPro

8 GPUs, the official batch (global 64 crops of 256 = 8 per device):
  python train.py --config=configs/gopro.py --workdir=/tmp/hinet_gopro \
      --config.data.train.root=/data/GoPro --config.data.val.root=/data/GoPro
1 GPU, the same batch as 8 micro-batches of 8 per update: add --config.grad_accum_steps=8.

Expected (paper, GoPro test, 1111 full 1280x720 frames, RGB): 32.71 dB PSNR / 0.959 SSIM.
Validation follows the official protocol: 256x256 tiles on HINet's adaptive grid, averaged where
they overlap (`grids`, options/train/GoPro/HINet.yml `val`), outputs rounded to 8 bits.

Recipe (options/train/GoPro/HINet.yml): HIN at levels 3..4, PSNR loss weight 0.5 on both stages,
Adam lr 2e-4 betas (0.9, 0.99), TrueCosineAnnealingLR T_max 400k eta_min 1e-7, no warm-up, grad clip
0.01 (default on), manual_seed 10, 256 crops with flips/rotations of the 512x512 crops
(`train/{blur,sharp}_crops`, scripts/data_preparation/gopro.py), val every 50k.
"""

from hinet_jax.configs import default as default_lib


def get_config():
  """GoPro config."""
  config = default_lib.get_config()
  config.seed = 10
  config.model.hin_position_left, config.model.hin_position_right = 3, 4
  config.data.train = default_lib.dataset_source('gopro', 'train')
  # The official training set is the prepared 512x512 crops, not the full frames
  # (options/train/GoPro/HINet.yml dataroot_lq: train/blur_crops.lmdb).
  config.data.train.crops = True
  config.data.val = default_lib.dataset_source('gopro', 'test')
  default_lib.use_full_frame_recipe(config)
  config.eval_every_steps = 50_000
  return config
