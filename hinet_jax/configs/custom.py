"""HINet on your own paired folders: DIR/input/* (degraded) matched by file name to DIR/target/*.

  python train.py --config=configs/custom.py --workdir=/tmp/hinet_custom \
      --config.data.train_dir=/data/mine/train --config.data.val_dir=/data/mine/val \
      --config.num_train_steps=100000 --config.batch_size=16

The official batch is the default config.batch_size, a global 64 crops of 256 (8 per device):
on 8 GPUs leave out --config.batch_size=16 above. 1 GPU, the same batch as 8 micro-batches of 8
per update: leave it out and add --config.grad_accum_steps=8 (about 7.1 GB float32 or 4.2 GB
bfloat16 per micro-batch for the 1x model, bench/README.md).

Validation images must share one size (crop them, or set --config.data.eval_batch_size=1).
Starts from the 1x model with the GoPro/REDS/Rain13k recipe (PSNR loss, betas (0.9, 0.99)); to
fine-tune a published model add --config.init_from=/path/to/converted_checkpoint and match
--config.model.* to it. No expected result: it depends on your data.
"""

import ml_collections

from hinet_jax.configs import default as default_lib


def get_config():
  """Paired-folder config; train_dir/val_dir feed data.train.root/data.val.root."""
  config = default_lib.get_config()
  config.data.train_dir = ml_collections.config_dict.placeholder(str)
  config.data.val_dir = ml_collections.config_dict.placeholder(str)
  config.data.train = default_lib.folder_source()
  config.data.val = default_lib.folder_source()
  config.data.train.root = config.data.get_ref('train_dir')
  config.data.val.root = config.data.get_ref('val_dir')
  config.eval_every_steps = 5_000
  return config
