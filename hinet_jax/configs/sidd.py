"""HINet on SIDD (real camera noise): the 1x model (default) or 0.5x (`configs/sidd.py:0.5x`).

Prepare the data (see hinet_jax/data/layouts.py): SIDD-Medium sRGB cropped to 512x512 patches
(`python -m hinet_jax.prepare_sidd`) and the validation .mat blocks.

8 GPUs, the official batch (global 64 crops of 256 = 8 per device):
  python train.py --config=configs/sidd.py --workdir=/tmp/hinet_sidd_1x \
      --config.data.train.root=/data/SIDD/train --config.data.val.noisy_mat=/data/SIDD/\
ValidationNoisyBlocksSrgb.mat --config.data.val.gt_mat=/data/SIDD/ValidationGtBlocksSrgb.mat
  python train.py --config=configs/sidd.py:0.5x --workdir=/tmp/hinet_sidd_0.5x ...(same data flags)
1 GPU, the same batch as 8 micro-batches of 8 per update: add --config.grad_accum_steps=8 (2 GPUs:
4). A micro-batch of the 1x model takes about what an 8x256x256 train step does, 7.1 GB in float32
or 4.2 GB in bfloat16 by XLA's count on an H200 (bench/README.md), plus 0.35 GB of gradient sum.

Expected (paper, SIDD validation, 1280 256x256 blocks, RGB, unrounded output): HINet 1x 39.99 dB
PSNR / 0.958 SSIM; HINet 0.5x 39.82 dB (the abstract's "+0.11 dB" over MPRNet's 39.71; 1x is
"+0.28 dB"). 400k steps of global batch 64 is ~8 GPU-days on V100-class hardware upstream.

Recipe (options/train/SIDD/HINet.yml and HINet_0.5x.yml): L1 loss weight 1 on both stages, Adam
lr 2e-4 betas (0.9, 0.999), TrueCosineAnnealingLR T_max 400k eta_min 1e-6, no warm-up, grad clip
0.01, manual_seed 100, 256 crops; the SIDD dataset class ignores use_flip/use_rot and applies
`random_augmentation` (identity half the time), i.e. 'dihedral_half'.
"""

import ml_collections

from hinet_jax.configs import default as default_lib

VARIANTS = {'1x': 64, '0.5x': 32}  # Base width wf per variant.


def get_config(arg=None):
  """SIDD config; `arg` is the variant, '1x' (default) or '0.5x'."""
  variant = arg or '1x'
  if variant not in VARIANTS:
    raise ValueError(f'Unknown SIDD variant {variant!r}: use configs/sidd.py:1x or :0.5x.')
  config = default_lib.get_config()
  config.seed = 100
  config.model.wf = VARIANTS[variant]
  config.model.hin_position_left, config.model.hin_position_right = 0, 4
  config.data.train = default_lib.folder_source(input_dir='input_crops', target_dir='gt_crops')
  config.data.val = ml_collections.ConfigDict(dict(
      kind='sidd_val', noisy_mat=ml_collections.config_dict.placeholder(str),
      gt_mat=ml_collections.config_dict.placeholder(str)))
  config.data.augment = 'dihedral_half'
  config.loss.name, config.loss.weight = 'l1', 1.0
  config.optim.b2 = 0.999
  config.optim.eta_min = 1e-6
  config.eval_every_steps = 25_000
  config.checkpoint_every_steps = 5_000
  return config
