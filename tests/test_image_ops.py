"""Tests for hinet_jax.data.image_ops: geometry on content that reveals errors, and image I/O."""

import os

import numpy as np
from PIL import Image
import pytest

from hinet_jax.data import image_ops

import data_fixtures


# ----------------------------------------------------------------------------
# Dihedral transforms.


@pytest.mark.parametrize('k', range(8))
def test_inverse_dihedral_undoes_dihedral(k):
  x = data_fixtures.coord_image(5, 7)
  y = image_ops.dihedral(x, k)
  np.testing.assert_array_equal(image_ops.inverse_dihedral(y, k), x)
  # NHWC gives the per-image result.
  batch = np.stack([x, x + 1])
  np.testing.assert_array_equal(image_ops.dihedral(batch, k)[1], y + 1)


def test_dihedral_hand_values_and_all_distinct():
  x = np.arange(6).reshape(2, 3, 1)  # [[0 1 2], [3 4 5]]
  # k=1: one counter-clockwise quarter turn; k=4: upside-down flip.
  np.testing.assert_array_equal(image_ops.dihedral(x, 1)[..., 0], [[2, 5], [1, 4], [0, 3]])
  np.testing.assert_array_equal(image_ops.dihedral(x, 4)[..., 0], [[3, 4, 5], [0, 1, 2]])
  np.testing.assert_array_equal(image_ops.dihedral(x, 6)[..., 0], [[2, 1, 0], [5, 4, 3]])
  square = data_fixtures.coord_image(4, 4)
  outs = {image_ops.dihedral(square, k).tobytes() for k in range(8)}
  assert len(outs) == 8
  with pytest.raises(ValueError, match='0..7'):
    image_ops.dihedral(x, 8)


def test_sample_dihedral_distributions():
  rng = np.random.default_rng(0)
  half = np.array([image_ops.sample_dihedral(rng, 'dihedral_half') for _ in range(7000)])
  assert 0.47 < np.mean(half == 0) < 0.53  # Identity half the time (official SIDD scheme).
  counts = np.bincount(half[half > 0], minlength=8)[1:]
  assert counts.min() > 0.8 * counts.mean()  # The other 7 are uniform.
  full = np.array([image_ops.sample_dihedral(rng, 'dihedral') for _ in range(4000)])
  assert set(full.tolist()) == set(range(8))
  assert image_ops.sample_dihedral(rng, 'none') == 0
  with pytest.raises(ValueError, match='augment'):
    image_ops.sample_dihedral(rng, 'flip')


# ----------------------------------------------------------------------------
# Paired crop.


def test_paired_random_crop_keeps_pairs_aligned():
  lq = data_fixtures.coord_image(20, 30)
  gt = lq + 5
  seen = set()
  for seed in range(20):
    a, b = image_ops.paired_random_crop(lq, gt, (6, 8), np.random.default_rng(seed))
    assert a.shape == (6, 8, 3)
    np.testing.assert_array_equal(b, a + 5)
    top, left = int(a[0, 0, 0]), int(a[0, 0, 1])
    np.testing.assert_array_equal(a, lq[top:top + 6, left:left + 8])
    seen.add((top, left))
  assert len(seen) > 10  # The window actually moves.
  a1, _ = image_ops.paired_random_crop(lq, gt, 6, np.random.default_rng(3))
  a2, _ = image_ops.paired_random_crop(lq, gt, 6, np.random.default_rng(3))
  np.testing.assert_array_equal(a1, a2)
  full, _ = image_ops.paired_random_crop(lq, gt, (20, 30), np.random.default_rng(0))
  np.testing.assert_array_equal(full, lq)


def test_paired_random_crop_errors():
  lq = np.zeros((10, 12, 3), np.uint8)
  with pytest.raises(ValueError, match=r'crop 16x16 is larger than the image \(10x12\)'):
    image_ops.paired_random_crop(lq, lq, 16, np.random.default_rng(0))
  with pytest.raises(ValueError, match='misaligned'):
    image_ops.paired_random_crop(lq, np.zeros((10, 13, 3), np.uint8), 4,
                                 np.random.default_rng(0))


# ----------------------------------------------------------------------------
# Values and padding.


def test_to_float32():
  np.testing.assert_array_equal(image_ops.to_float32(np.array([0, 255], np.uint8)), [0, 1])
  u16 = image_ops.to_float32(np.array([0, 1, 2, 65535], np.uint16))
  assert u16.dtype == np.float32 and u16[-1] == 1.0
  assert 0 < u16[1] < u16[2]  # 16-bit steps survive (uint8 would merge them).
  assert image_ops.to_float32(np.array([0.25], np.float64)).dtype == np.float32
  with pytest.raises(ValueError, match='int32'):
    image_ops.to_float32(np.array([1], np.int32))


def test_pad_to_multiple():
  x = data_fixtures.coord_image(17, 30)
  y, hw = image_ops.pad_to_multiple(x, 16)
  assert y.shape == (32, 32, 3) and hw == (17, 30)
  np.testing.assert_array_equal(y[:17, :30], x)
  np.testing.assert_array_equal(y[17, :30], x[15])  # Reflect: mirror without the edge row.
  same, hw = image_ops.pad_to_multiple(x[:16, :16], 16)
  assert same.shape == (16, 16, 3) and hw == (16, 16)
  batch, _ = image_ops.pad_to_multiple(np.stack([x, x]), 8)
  assert batch.shape == (2, 24, 32, 3)


# ----------------------------------------------------------------------------
# Reading and writing.


def test_write_read_roundtrip_8_and_16_bit(tmp_path):
  rng = np.random.default_rng(0)
  x8 = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
  image_ops.write_image(tmp_path / 'a.png', x8)
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'a.png'), x8)
  with Image.open(tmp_path / 'a.png') as im:  # Another decoder reads the same pixels.
    np.testing.assert_array_equal(np.asarray(im), x8)
  x16 = rng.integers(0, 65536, (9, 11, 3), dtype=np.uint16)
  image_ops.write_image(tmp_path / 'b.png', x16)
  y16 = image_ops.read_image(tmp_path / 'b.png')
  assert y16.dtype == np.uint16
  np.testing.assert_array_equal(y16, x16)  # Pillow alone would truncate to 8 bits.
  assert sorted(os.listdir(tmp_path)) == ['a.png', 'b.png']  # No temp files left behind.


@pytest.mark.parametrize('dtype', [np.uint8, np.uint16])
def test_grayscale_written_and_read_as_rgb(tmp_path, dtype):
  gray = np.random.default_rng(2).integers(0, np.iinfo(dtype).max + 1, (6, 7), dtype=dtype)
  image_ops.write_image(tmp_path / 'g.png', gray)
  with Image.open(tmp_path / 'g.png') as im:  # Stored as one channel, Pillow reads it back.
    np.testing.assert_array_equal(np.asarray(im), gray)
  y = image_ops.read_image(tmp_path / 'g.png')
  assert y.dtype == dtype
  np.testing.assert_array_equal(y, np.repeat(gray[..., None], 3, axis=-1))


@pytest.mark.parametrize('channels', [2, 4])
def test_png16_alpha_is_dropped(tmp_path, channels):
  import imagecodecs  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(3).integers(0, 65536, (5, 4, channels), dtype=np.uint16)
  (tmp_path / 'a.png').write_bytes(imagecodecs.png_encode(x))
  y = image_ops.read_image(tmp_path / 'a.png')
  expected = x[..., :1].repeat(3, -1) if channels == 2 else x[..., :3]
  assert y.dtype == np.uint16
  np.testing.assert_array_equal(y, expected)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
  old = np.full((4, 4, 3), 9, np.uint8)
  image_ops.write_image(tmp_path / 'a.png', old)

  def broken_encoder(*args, **kwargs):
    raise RuntimeError('disk full')

  monkeypatch.setattr(image_ops, 'encode_png', broken_encoder)
  with pytest.raises(RuntimeError, match='disk full'):
    image_ops.write_image(tmp_path / 'a.png', np.zeros((4, 4, 3), np.uint8))
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'a.png'), old)
  assert os.listdir(tmp_path) == ['a.png']
  with pytest.raises(ValueError, match=r'x\.gif.*unknown image extension'):
    image_ops.write_image(tmp_path / 'x.gif2', old)


def test_write_float_rounds(tmp_path):
  x = np.array([[[0.0, 0.5 / 255, 1.2]]], np.float32)  # 0.5/255 rounds to 0; clipped at 1.
  image_ops.write_image(tmp_path / 'f8.png', x)
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'f8.png')[0, 0], [0, 0, 255])
  image_ops.write_image(tmp_path / 'f16.png', np.full((2, 2, 3), 0.5, np.float32), bit_depth=16)
  assert image_ops.read_image(tmp_path / 'f16.png')[0, 0, 0] == 32768  # round(0.5 * 65535)


@pytest.mark.parametrize('filters', [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
def test_png16_decoder_handles_every_filter(tmp_path, filters):
  x = np.random.default_rng(1).integers(0, 65536, (7, 5, 3), dtype=np.uint16)
  path = tmp_path / 'f.png'
  path.write_bytes(data_fixtures.png16_with_filters(x, filters))
  np.testing.assert_array_equal(image_ops.read_image(path), x)


def test_gray_alpha_palette_rule(tmp_path):
  # Files from another encoder (Pillow).
  rgb = np.random.default_rng(4).integers(0, 256, (3, 4, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'rgb.png')
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'rgb.png'), rgb)
  gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
  Image.fromarray(gray).save(tmp_path / 'g.png')
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'g.png'),
                                np.repeat(gray[..., None], 3, -1))
  rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
  Image.fromarray(rgba).save(tmp_path / 'a.png')
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'a.png'), rgba[..., :3])
  Image.fromarray(rgba[..., :3]).convert('P').save(tmp_path / 'p.png')
  assert image_ops.read_image(tmp_path / 'p.png').shape == (3, 4, 3)
  g16 = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
  Image.fromarray(g16).save(tmp_path / 'g16.png')
  y = image_ops.read_image(tmp_path / 'g16.png')
  assert y.dtype == np.uint16 and y.shape == (3, 4, 3)
  np.testing.assert_array_equal(y[..., 1], g16)


def test_tiff16_and_jpeg(tmp_path):
  import tifffile  # pylint: disable=g-import-not-at-top
  x16 = np.random.default_rng(0).integers(0, 65536, (5, 6, 3), dtype=np.uint16)
  tifffile.imwrite(tmp_path / 'x.tif', x16)
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'x.tif'), x16)
  x8 = np.full((8, 8, 3), 128, np.uint8)
  Image.fromarray(x8).save(tmp_path / 'x.jpg', quality=95)
  y = image_ops.read_image(tmp_path / 'x.jpg')
  assert y.dtype == np.uint8 and np.abs(y.astype(int) - 128).max() <= 2


def test_unreadable_files_are_named(tmp_path):
  image_ops.write_image(tmp_path / 'ok.png', np.zeros((32, 32, 3), np.uint8) + 7)
  data = (tmp_path / 'ok.png').read_bytes()
  (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
  with pytest.raises(image_ops.ImageReadError, match='cut.png.*truncated'):
    image_ops.read_image(tmp_path / 'cut.png')
  (tmp_path / 'junk.jpg').write_bytes(b'not an image')
  with pytest.raises(image_ops.ImageReadError, match='junk.jpg'):
    image_ops.read_image(tmp_path / 'junk.jpg')
  with pytest.raises(image_ops.ImageReadError, match='missing.png'):
    image_ops.read_image(tmp_path / 'missing.png')
  x16 = np.ones((6, 6, 3), np.uint16)
  image_ops.write_image(tmp_path / 'h.png', x16)
  data = (tmp_path / 'h.png').read_bytes()
  (tmp_path / 'h_cut.png').write_bytes(data[:-40])
  with pytest.raises(image_ops.ImageReadError, match='h_cut.png'):
    image_ops.read_image(tmp_path / 'h_cut.png')


def test_npy_images_are_memory_mapped_and_checked(tmp_path):
  rng = np.random.default_rng(1)
  for dtype, top in ((np.uint8, 256), (np.uint16, 65536)):
    x = rng.integers(0, top, (9, 11, 3), dtype=dtype)
    path = tmp_path / f'a_{np.dtype(dtype).name}.npy'
    image_ops.write_image(path, x)
    y = image_ops.read_image(path)
    assert y.dtype == dtype and isinstance(y, np.memmap)  # Not decoded: slices read the slice.
    np.testing.assert_array_equal(y, x)
  gray = rng.integers(0, 256, (5, 4), dtype=np.uint8)
  np.save(tmp_path / 'gray.npy', gray)
  np.testing.assert_array_equal(image_ops.read_image(tmp_path / 'gray.npy'),
                                np.repeat(gray[..., None], 3, axis=-1))
  np.save(tmp_path / 'float.npy', np.zeros((4, 4, 3), np.float32))
  with pytest.raises(image_ops.ImageReadError, match=r'float.npy.*uint8 or uint16'):
    image_ops.read_image(tmp_path / 'float.npy')
  np.save(tmp_path / 'rgba.npy', np.zeros((4, 4, 4), np.uint8))
  with pytest.raises(image_ops.ImageReadError, match=r'rgba.npy.*\(4, 4, 4\)'):
    image_ops.read_image(tmp_path / 'rgba.npy')
  (tmp_path / 'junk.npy').write_bytes(b'not an array')
  with pytest.raises(image_ops.ImageReadError, match='junk.npy.*numpy.save'):
    image_ops.read_image(tmp_path / 'junk.npy')
  assert image_ops.is_image_file('crop_s001.npy')


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_written_images_get_the_umask_permissions(tmp_path, umask):
  # Issue 21: restored images were 0600 (mkstemp) while the rest of a workdir follows the umask.
  old_umask = os.umask(umask)
  try:
    for name in ('a.png', 'b.npy', 'c.jpg'):
      image_ops.write_image(tmp_path / name, np.zeros((4, 4, 3), np.uint8))
  finally:
    os.umask(old_umask)
  for name in ('a.png', 'b.npy', 'c.jpg'):
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
