r"""The photo folders of the BM3D comparison: colour photographs that ship inside Python packages.

  pip install matplotlib scikit-learn   # beside the serve extra (gradio) and scikit-image
  python bench/bm3d_photos.py --out=/tmp/bm3d
  python train.py --config=configs/photos.py:denoise --workdir=/tmp/bm3d/run \
      --config.data.train_dir=/tmp/bm3d/train --config.data.val_dir=/tmp/bm3d/val \
      --config.num_train_steps=5000
  python bench/bm3d_compare.py --workdir=/tmp/bm3d/run --photos=/tmp/bm3d/test

test: scikit-image's astronaut, chelsea and coffee, never trained on. val: camera and coins.
train: the other colour photographs found (13 with all four packages), as PNG or their own JPEG.
A package that is missing is named and skipped.
"""

import importlib.util
import os
import shutil

from absl import app
from absl import flags
import numpy as np

from hinet_jax.data import image_ops

_OUT = flags.DEFINE_string('out', None, 'Folder to write train/, val/ and test/ into.')

TEST = ('astronaut', 'chelsea', 'coffee')
VAL = ('camera', 'coins')
SKIMAGE_TRAIN = ('rocket', 'immunohistochemistry', 'retina', 'hubble_deep_field')
# (package, file inside it) of the colour photographs other packages ship as data.
PACKAGED = (('gradio', 'media_assets/images/cheetah.jpg'),
            ('gradio', 'media_assets/images/groot.jpeg'),
            ('gradio', 'media_assets/images/tower.jpg'),
            ('gradio', 'test_data/cheetah2.jpg'),
            ('matplotlib', 'mpl-data/sample_data/grace_hopper.jpg'),
            ('sklearn', 'datasets/images/china.jpg'),
            ('sklearn', 'datasets/images/flower.jpg'))
PIP_NAMES = {'sklearn': 'scikit-learn'}


def _write(folder: str, name: str, image) -> None:
  os.makedirs(folder, exist_ok=True)
  image_ops.write_image(os.path.join(folder, name + '.png'),
                        image_ops.to_rgb(np.asarray(image, np.uint8)))


def main(_):
  import skimage.data  # pylint: disable=g-import-not-at-top
  out = _OUT.value
  for split, names in (('test', TEST), ('val', VAL), ('train', SKIMAGE_TRAIN)):
    for name in names:
      _write(os.path.join(out, split), name, getattr(skimage.data, name)())
  left, right, _ = skimage.data.stereo_motorcycle()
  _write(os.path.join(out, 'train'), 'motorcycle_left', left)
  _write(os.path.join(out, 'train'), 'motorcycle_right', right)
  for package, path in PACKAGED:
    spec = importlib.util.find_spec(package)
    if spec is None:
      print(f'{package} is not installed: {path} left out '
            f'(pip install {PIP_NAMES.get(package, package)})')
      continue
    source = os.path.join(os.path.dirname(spec.origin), path)
    shutil.copy(source, os.path.join(out, 'train', os.path.basename(path)))
  print({split: sorted(os.listdir(os.path.join(out, split))) for split in ('train', 'val', 'test')})


if __name__ == '__main__':
  flags.mark_flags_as_required(['out'])
  app.run(main)
