r"""PNG write and read time of `image_ops` for one large 16-bit colour photo.

  python -m bench.image_io [--height=3000 --width=4000] [--reps=3] \
      [--compare=/tmp/old_image_ops.py]

The photo is a scikit-image photograph scaled to the given size, in 16 bits, with Gaussian noise
(sigma 150 of 65535) so that the low bits vary as a camera's do (a smooth upscale alone would
compress far better than a real photo). Three timings, each the median of --reps:
  * write: `write_image` to a .png (encode, temp file, rename);
  * read own: `read_image` of that file;
  * read libpng: `read_image` of the same pixels written by libpng with its default adaptive
    filters (as most software writes PNGs), which uses every PNG row filter.
--compare loads another copy of `image_ops` from a file (for example an older version, saved
with `git show COMMIT:PATH > FILE`) and times it on the same photo, side by side.
"""

import importlib.util
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import imagecodecs
import numpy as np

from hinet_jax.data import image_ops

_HEIGHT = flags.DEFINE_integer('height', 3000, 'Photo height.')
_WIDTH = flags.DEFINE_integer('width', 4000, 'Photo width.')
_REPS = flags.DEFINE_integer('reps', 3, 'Repetitions per timing (median reported).')
_COMPARE = flags.DEFINE_string('compare', None, 'Path of another image_ops.py to time as well.')
_NOISE_SIGMA = 150.0  # Of 65535: sensor-like noise in the low bits.


def make_photo(height, width, seed=0):
  """A (height, width, 3) uint16 photograph-like image (bilinear upscale plus noise)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  base = skimage.data.astronaut().astype(np.float32) / 255
  x = ndimage.zoom(base, (height / base.shape[0], width / base.shape[1], 1), order=1)
  x = x * 65535 + np.random.default_rng(seed).normal(0, _NOISE_SIGMA, x.shape).astype(np.float32)
  return np.clip(np.round(x), 0, 65535).astype(np.uint16)


def load_module(path):
  """Imports a standalone image_ops.py file as a module."""
  spec = importlib.util.spec_from_file_location('image_ops_compared', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def median_seconds(fn, reps):
  """The median wall time of `reps` calls of fn()."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_module(module, photo, folder, foreign_png, reps):
  """Times write, read of its own file, and read of the libpng-written file; checks the pixels."""
  path = os.path.join(folder, 'own.png')
  write = median_seconds(lambda: module.write_image(path, photo), reps)
  read_own = median_seconds(lambda: module.read_image(path), reps)
  read_foreign = median_seconds(lambda: module.read_image(foreign_png), reps)
  for p in (path, foreign_png):
    np.testing.assert_array_equal(module.read_image(p), photo)
  return {'write': write, 'read own': read_own, 'read libpng': read_foreign,
          'MB': os.path.getsize(path) / 1e6}


def main(argv):
  del argv
  photo = make_photo(_HEIGHT.value, _WIDTH.value)
  modules = {'image_ops': image_ops}
  if _COMPARE.value:
    modules = {os.path.basename(_COMPARE.value): load_module(_COMPARE.value), **modules}
  print(f'{_HEIGHT.value}x{_WIDTH.value} 16-bit RGB ({photo.nbytes / 1e6:.0f} MB raw), '
        f'median of {_REPS.value}, load before: {os.getloadavg()[0]:.1f}')
  print(f'{"module":<22}{"write s":>9}{"read own s":>12}{"read libpng s":>15}{"file MB":>9}')
  with tempfile.TemporaryDirectory() as folder:
    foreign_png = os.path.join(folder, 'libpng.png')
    with open(foreign_png, 'wb') as f:
      f.write(imagecodecs.png_encode(photo))  # libpng's defaults: zlib 6, adaptive filters.
    for name, module in modules.items():
      r = time_module(module, photo, folder, foreign_png, _REPS.value)
      print(f'{name:<22}{r["write"]:>9.2f}{r["read own"]:>12.2f}{r["read libpng"]:>15.2f}'
            f'{r["MB"]:>9.1f}')


if __name__ == '__main__':
  app.run(main)
