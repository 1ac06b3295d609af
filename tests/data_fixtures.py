"""Tiny on-disk datasets in the real formats, written by the data tests."""

import os
import struct

import numpy as np
from PIL import Image
import scipy.io


def coord_image(h, w, base=0):
  """uint16 (h, w, 3) whose pixels encode their own position: (row, col, base).

  Any misalignment or wrong rotation between two crops shows up in the values.
  """
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  return np.stack([rows, cols, np.full_like(rows, base)], -1).astype(np.uint16)


class ArraySource:
  """A picklable in-memory source: a list of {'lq', 'gt', 'name'} dicts."""

  def __init__(self, items):
    self.items = list(items)

  def __len__(self):
    return len(self.items)

  def __getitem__(self, index):
    return self.items[index]


def constant_source(n, size=8):
  """n items whose lq/gt are constant images of value i, so a batch reveals its indices."""
  return ArraySource({'lq': np.full((size, size, 3), i, np.uint8),
                      'gt': np.full((size, size, 3), i, np.uint8), 'name': f'{i:03d}'}
                     for i in range(n))


def random_pair(rng, h=12, w=16):
  """A random uint8 (lq, gt) pair with gt = lq // 2 (so the two are related)."""
  lq = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  return lq, lq // 2


def write_rgb(path, x):
  """Writes an 8-bit RGB image in the format of the extension (JPEG at q=95)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(x).save(path, quality=95)


def write_pair_folder(root, names, lq_dir='input', gt_dir='target', lq_ext='.png',
                      gt_ext='.png', size=(12, 16), seed=0):
  """Writes <root>/<lq_dir>/<name><lq_ext> and <root>/<gt_dir>/<name><gt_ext>.

  Returns:
    dict name -> (lq, gt) arrays as written (lq as decoded back for JPEG).
  """
  rng = np.random.default_rng(seed)
  out = {}
  for name in names:
    lq, gt = random_pair(rng, *size)
    lq_path = os.path.join(root, lq_dir, name + lq_ext)
    write_rgb(lq_path, lq)
    write_rgb(os.path.join(root, gt_dir, name + gt_ext), gt)
    out[name] = (np.asarray(Image.open(lq_path).convert('RGB')), gt)
  return out


def write_sidd_mats(folder, shape=(2, 3, 8, 8, 3), seed=0, gt_shape=None):
  """Writes ValidationNoisyBlocksSrgb.mat / ValidationGtBlocksSrgb.mat (MATLAB v5).

  Returns:
    (noisy_path, gt_path, noisy, gt).
  """
  rng = np.random.default_rng(seed)
  noisy = rng.integers(0, 256, shape, dtype=np.uint8)
  gt = rng.integers(0, 256, gt_shape or shape, dtype=np.uint8)
  noisy_path = os.path.join(folder, 'ValidationNoisyBlocksSrgb.mat')
  gt_path = os.path.join(folder, 'ValidationGtBlocksSrgb.mat')
  scipy.io.savemat(noisy_path, {'ValidationNoisyBlocksSrgb': noisy})
  scipy.io.savemat(gt_path, {'ValidationGtBlocksSrgb': gt})
  return noisy_path, gt_path, noisy, gt


def write_mat73(path, key, array):
  """Writes `array` as a MATLAB v7.3 file: HDF5 with the 128-byte MATLAB header.

  MATLAB stores arrays column-major, so the HDF5 dataset holds the transpose.
  """
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, 'w', userblock_size=512) as f:
    f.create_dataset(key, data=np.ascontiguousarray(array.T))
  header = b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: test HDF5 schema 1.00 .'
  header = header.ljust(116, b' ') + b'\x00' * 8 + struct.pack('<H', 0x0200) + b'IM'
  with open(path, 'r+b') as f:
    f.write(header)


def png16_with_filters(x, filters):
  """Encodes (H, W, 3) uint16 as PNG using the given per-row filter types 0-4.

  A reference encoder for the decoder test (spec section 9), written plainly.
  """
  import zlib  # pylint: disable=g-import-not-at-top
  h, w, _ = x.shape
  bpp = 6
  rows = [bytearray(x[r].astype('>u2').tobytes()) for r in range(h)]
  out = bytearray()
  for r in range(h):
    ftype = filters[r % len(filters)]
    cur, prev = rows[r], rows[r - 1] if r else bytearray(len(rows[r]))
    line = bytearray(len(cur))
    for i, v in enumerate(cur):
      a = cur[i - bpp] if i >= bpp else 0
      b = prev[i]
      c = prev[i - bpp] if i >= bpp else 0
      if ftype == 0:
        pred = 0
      elif ftype == 1:
        pred = a
      elif ftype == 2:
        pred = b
      elif ftype == 3:
        pred = (a + b) // 2
      else:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
      line[i] = (v - pred) & 255
    out += bytes([ftype]) + line

  def chunk(kind, payload):
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack('>I', len(payload)) + kind + payload + struct.pack('>I', crc)

  return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0))
          + chunk(b'IDAT', zlib.compress(bytes(out))) + chunk(b'IEND', b''))


def random_params(model, seed=0, std=0.05):
  """Random weights (N(0, std)) of `model`'s shapes: no init pass to compile."""
  import jax  # pylint: disable=g-import-not-at-top
  from hinet_jax import models  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: rng.normal(0, std, a.shape).astype(np.float32),
                      models.abstract_params(model))


def restored(model, params, x):
  """`model`'s restored image (stage 2) for the batch `x`, jitted: an eager apply compiles each
  op on its own, seconds per reference."""
  import jax  # pylint: disable=g-import-not-at-top
  from hinet_jax import models  # pylint: disable=g-import-not-at-top
  return np.asarray(jax.jit(
      lambda p, y: models.restored_image(model.apply({'params': p}, y)))(params, x))
