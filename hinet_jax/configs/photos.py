"""HINet from your own clean photos: degraded pairs synthesized on the fly (`data/synthetic.py`).

  python train.py --config=configs/photos.py:denoise --workdir=/tmp/hinet_photos \
      --config.data.train_dir=/photos/train --config.data.val_dir=/photos/val

Any folder of clean images (PNG, JPEG, TIFF, .npy; grayscale made RGB; photos smaller than the
crop are padded). The task picks the degradation chain and its ranges; each field can be
overridden, e.g. `--config.data.train.noise_sigma='(5, 50)'` or
`--config.data.train.degradations=poisson,jpeg` (set the same on data.val):
  denoise (default): blind Gaussian noise, sigma 0-55 on the 0-255 scale (one model for 15-50).
  camera: Poisson-Gaussian (signal-dependent) noise, 30-300 photons for white, read noise 0-5.
  deblur: motion blur 3-21 px at any angle, or Gaussian blur sigma 0.5-3, then light noise 0-5.
  jpeg: JPEG quality 10-60.
  all: blur, noise and JPEG in a random order per crop.

The model, optimizer and loop are the demo's (wf 16, depth 4, 64 crops): a CPU-sized start;
raise config.model.wf, crop_size and num_train_steps on an accelerator. No expected result: it
depends on the photos. On 13 colour photos, 5000 steps of :denoise (26 minutes on a 2-core CPU)
come within 0.4 dB of BM3D on three unseen photos and beat it in 3 of 9 cases (README).
"""

import ml_collections

from hinet_jax.configs import demo as demo_lib

# data.train fields per task; data.val takes the same chain.
TASKS = {
    'denoise': dict(degradations='noise', noise_sigma=(0.0, 55.0)),
    'camera': dict(degradations='poisson', poisson_peak=(30.0, 300.0), read_sigma=(0.0, 5.0)),
    'deblur': dict(degradations='motion_blur,noise', motion_length=(3.0, 21.0),
                   noise_sigma=(0.0, 5.0)),
    'jpeg': dict(degradations='jpeg', jpeg_quality=(10.0, 60.0)),
    'all': dict(degradations='gaussian_blur,noise,jpeg', order='random', blur_sigma=(0.5, 2.0),
                noise_sigma=(0.0, 30.0), jpeg_quality=(30.0, 95.0)),
}


def photo_source(split, task):
  """A `datasets.make_source('photos', ...)` spec with every degradation field, set by task."""
  spec = dict(kind='photos', root=ml_collections.config_dict.placeholder(str), split=split,
              degradations='noise', order='given', noise_sigma=(25.0, 25.0),
              poisson_peak=(30.0, 300.0), read_sigma=(0.0, 5.0), blur_sigma=(0.5, 3.0),
              motion_length=(3.0, 21.0), jpeg_quality=(30.0, 95.0), seed=0, val_crop=256)
  spec.update(TASKS[task])
  return ml_collections.ConfigDict(spec)


def get_config(arg=None):
  """Clean-photo config; `arg` is the task (see TASKS), 'denoise' by default."""
  task = arg or 'denoise'
  if task not in TASKS:
    raise ValueError(f'Unknown photos task {task!r}: use configs/photos.py:' + '|'.join(TASKS))
  config = demo_lib.get_config()
  config.data.train_dir = ml_collections.config_dict.placeholder(str)
  config.data.val_dir = ml_collections.config_dict.placeholder(str)
  config.data.train = photo_source('train', task)
  config.data.val = photo_source('val', task)
  config.data.train.root = config.data.get_ref('train_dir')
  config.data.val.root = config.data.get_ref('val_dir')
  # The non-local means baseline estimates a Gaussian sigma: meaningful for denoising only.
  config.eval.nlm_baseline = task == 'denoise'
  return config
