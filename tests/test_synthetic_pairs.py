"""Clean photos -> synthesized (degraded, clean) pairs inside the grain pipeline."""

import numpy as np
from PIL import Image
import pytest

from hinet_jax import errors
from hinet_jax.configs import photos as photos_config
from hinet_jax.data import datasets
from hinet_jax.data import image_ops
from hinet_jax.data import input_pipeline
from hinet_jax.data import synthetic


def _photo(h, w, seed):
  """A smooth-ish uint8 RGB photo: a gradient plus a little texture."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w]
  base = np.stack([yy * 3 + xx, 200 - xx * 2, (yy * xx) % 97 + 60], -1).astype(np.float32)
  return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
  for i, (h, w) in enumerate([(64, 72), (40, 40), (20, 26)]):  # the last one smaller than a crop
    Image.fromarray(_photo(h, w, i)).save(tmp_path / f'p{i}.png')
  return tmp_path


def test_gaussian_noise_has_the_drawn_sigma():
  x = np.full((64, 64, 3), 0.5, np.float32)
  rng = np.random.default_rng(0)
  residual = synthetic.gaussian_noise(x, rng, (25.0, 25.0)) - x
  assert abs(residual.std() * 255 - 25) < 1
  sigmas = [synthetic.gaussian_noise(x, rng, (0.0, 50.0)).std() * 255 for _ in range(20)]
  assert min(sigmas) < 20 < 30 < max(sigmas)  # blind: a new sigma per draw


def test_poisson_noise_grows_with_the_signal():
  rng = np.random.default_rng(0)
  dark, bright = (np.full((64, 64, 3), v, np.float32) for v in (0.05, 0.8))
  std = lambda x: (synthetic.poisson_noise(x, rng, (100.0, 100.0), (0.0, 0.0)) - x).std()
  assert std(bright) > 3 * std(dark)
  np.testing.assert_allclose(std(bright), np.sqrt(0.8 / 100), rtol=0.1)


def test_blurs_keep_the_mean_and_smooth():
  x = image_ops.to_float32(_photo(48, 48, 0))
  rng = np.random.default_rng(0)
  for y in (synthetic.gaussian_blur(x, rng, (2.0, 2.0)),
            synthetic.motion_blur(x, rng, (9.0, 9.0))):
    assert y.shape == x.shape
    assert abs(y.mean() - x.mean()) < 0.01
    assert np.abs(np.diff(y, axis=1)).mean() < 0.7 * np.abs(np.diff(x, axis=1)).mean()


def test_jpeg_quality_orders_the_error():
  x = image_ops.to_float32(_photo(48, 48, 0))
  err = lambda q: np.abs(synthetic.jpeg(x, np.random.default_rng(0), (q, q)) - x).mean()
  assert err(10) > err(90) > 0


def test_chain_in_a_random_order_is_seeded():
  chain = synthetic.make_degradations('gaussian_blur,noise,jpeg', order='random',
                                      noise_sigma=(5, 30))
  x = image_ops.to_float32(_photo(32, 32, 1))
  a, b = (chain(x, np.random.default_rng(7)) for _ in range(2))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, chain(x, np.random.default_rng(8)))
  assert chain.margin == 9  # Gaussian blur up to sigma 3: radius 9


def test_training_pairs_in_the_pipeline_are_seeded_and_resume(folder):
  source = datasets.create_source(dict(kind='photos', root=str(folder), degradations='noise',
                                       noise_sigma=(10, 40)))
  make = lambda: input_pipeline.create_train_iter(source, batch_size=2, crop_size=32, seed=3)
  it = make()
  batches = [next(it) for _ in range(4)]
  for batch in batches:
    assert batch['lq'].shape == batch['gt'].shape == (2, 32, 32, 3)
    assert batch['lq'].dtype == np.float32
    assert 5 < (batch['lq'] - batch['gt']).std() * 255 < 45
  # The clean half is a crop of one of the photos, the same pixels as read (dihedral undone).
  photos = [image_ops.to_float32(_photo(h, w, i)) for i, (h, w) in
            enumerate([(64, 72), (40, 40), (20, 26)])]
  gt = batches[0]['gt'][0]
  assert any(_is_window(image_ops.inverse_dihedral(gt, k), p) for k in range(8) for p in photos)
  again = make()
  np.testing.assert_array_equal(next(again)['lq'], batches[0]['lq'])
  resumed = make()
  state = it.get_state()
  want = next(it)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['lq'], want['lq'])


def _is_window(patch, photo):
  """Whether `patch` is a window of `photo` padded as the pipeline pads (edge repeated)."""
  h, w = patch.shape[:2]
  padded = np.pad(photo, ((0, max(0, h - photo.shape[0])), (0, max(0, w - photo.shape[1])),
                          (0, 0)), mode='symmetric')
  return any(np.array_equal(padded[t:t + h, l:l + w], patch)
             for t in range(padded.shape[0] - h + 1) for l in range(padded.shape[1] - w + 1))


def test_a_blur_crop_has_no_padding_at_its_edges():
  """The crop is degraded with a margin of real pixels: equal to blurring the whole photo."""
  photo = _photo(60, 60, 2)
  chain = synthetic.make_degradations('gaussian_blur', blur_sigma=(1.5, 1.5))
  crop = synthetic.SynthesizeCrop(24, 'none', chain)
  out = crop.random_map({'gt': photo, 'lq': photo}, np.random.default_rng(0))
  whole = chain(image_ops.to_float32(photo), np.random.default_rng(0))
  hits = [(t, l) for t in range(37) for l in range(37)
          if np.array_equal(image_ops.to_float32(photo)[t:t + 24, l:l + 24], out['gt'])]
  (t, l), = hits
  np.testing.assert_allclose(out['lq'], whole[t:t + 24, l:l + 24], atol=1.5 / 255)


def test_validation_tiles_are_degraded_the_same_on_every_read(folder):
  source = synthetic.PhotoFolderSource(folder, split='val', val_crop=32, noise_sigma=25)
  assert len(source) == 4 + 1 + 1  # 64x72: 2x2 tiles, 40x40: one, 20x26: one, padded
  a, b = source[5], source[5]
  assert a['lq'].shape == a['gt'].shape == (32, 32, 3) and a['lq'].dtype == np.uint8
  np.testing.assert_array_equal(a['lq'], b['lq'])
  assert not np.array_equal(source[0]['lq'], source[1]['lq'][::-1])


def test_training_photos_are_decoded_once_per_process_within_the_cache(folder):
  """A training item is the whole decoded photo, kept up to `cache_mb` per process: a photo gone
  from disk after its first read is still served from the cache, not beyond it, and a pickled
  source (a grain worker's copy) starts empty and reads the disk."""
  import pickle  # pylint: disable=g-import-not-at-top
  cached = synthetic.PhotoFolderSource(folder)
  uncached = synthetic.PhotoFolderSource(folder, cache_mb=0)
  first = cached[0]['gt']
  np.testing.assert_array_equal(first, uncached[0]['gt'])
  copy = pickle.loads(pickle.dumps(cached))
  (folder / 'p0.png').unlink()
  np.testing.assert_array_equal(cached[0]['gt'], first)
  for source in (uncached, copy):
    with pytest.raises(image_ops.ImageReadError, match='p0.png'):
      source[0]  # pylint: disable=pointless-statement


def test_bad_input_is_named(tmp_path, folder):
  with pytest.raises(errors.InvalidInputError, match='contains no images'):
    synthetic.PhotoFolderSource(_empty(tmp_path))
  with pytest.raises(errors.MissingPathError, match='does not exist'):
    synthetic.PhotoFolderSource(tmp_path / 'nowhere')
  with pytest.raises(errors.InvalidInputError, match='Unknown degradation.*motion_blur'):
    synthetic.PhotoFolderSource(folder, degradations='noise,rain')
  with pytest.raises(errors.InvalidInputError, match='noise_sigma'):
    synthetic.PhotoFolderSource(folder, noise_sigma=(30, 10))
  with pytest.raises(errors.InvalidInputError, match='order'):
    synthetic.PhotoFolderSource(folder, order='shuffled')


def _empty(tmp_path):
  path = tmp_path / 'empty'
  path.mkdir()
  return path


@pytest.mark.parametrize('task', sorted(photos_config.TASKS))
def test_photos_config_builds_each_task(folder, task):
  config = photos_config.get_config(task)
  config.data.train_dir = config.data.val_dir = str(folder)
  source = datasets.create_source(config.data.train)
  item = source.train_transform(32, 'dihedral').random_map(source[0], np.random.default_rng(0))
  assert item['lq'].shape == (32, 32, 3) and not np.array_equal(item['lq'], item['gt'])
  assert len(datasets.create_val_sources(config.data.val)['val']) > 0
  with pytest.raises(ValueError, match='photos task'):
    photos_config.get_config('sharpen')
