"""Tests for the data sources (`datasets` and its modules), crop preparation and tfds_builders, on
tiny files in the real formats."""

import os
import subprocess
import sys

import numpy as np
import pytest

from hinet_jax import errors
from hinet_jax.configs import gopro as gopro_config
from hinet_jax.configs import rain13k as rain13k_config
from hinet_jax.configs import sidd as sidd_config
from hinet_jax.data import datasets
from hinet_jax.data import demo_set
from hinet_jax.data import image_ops
from hinet_jax.data import input_pipeline
from hinet_jax.data import layouts
from hinet_jax.data import paired_files
from hinet_jax.data import prepare
from hinet_jax.data import prepare_gopro
from hinet_jax.data import prepare_sidd
from hinet_jax.data import sidd_mat
from hinet_jax.data import tfds_source

import data_fixtures


# ----------------------------------------------------------------------------
# Paired folders and their bad-input errors.


def test_paired_folder_source_reads_matched_pairs(tmp_path):
  written = data_fixtures.write_pair_folder(tmp_path, ['b', 'a', 'c'])
  src = paired_files.PairedFolderSource(tmp_path)
  assert len(src) == 3 and [src[i]['name'] for i in range(3)] == ['a', 'b', 'c']
  item = src[1]
  np.testing.assert_array_equal(item['lq'], written['b'][0])
  np.testing.assert_array_equal(item['gt'], written['b'][1])
  assert item['lq'].dtype == np.uint8 and item['lq'].shape == (12, 16, 3)
  # Configurable folder names and JPEG inputs matched by stem (REDS-style).
  data_fixtures.write_pair_folder(tmp_path / 'x', ['0', '1'], 'blur', 'sharp', lq_ext='.jpg')
  src = datasets.make_source('folder', root=str(tmp_path / 'x'), input_dir='blur',
                             target_dir='sharp')
  assert [src[i]['name'] for i in range(2)] == ['0', '1']


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nowhere.*input.*does not exist'):
    paired_files.PairedFolderSource(tmp_path / 'nowhere')
  (tmp_path / 'input').mkdir()
  (tmp_path / 'target').mkdir()
  (tmp_path / 'input' / 'notes.txt').write_text('hi')
  with pytest.raises(ValueError, match=r'input contains no images'):
    paired_files.PairedFolderSource(tmp_path)


def test_unmatched_names_are_listed(tmp_path):
  data_fixtures.write_pair_folder(tmp_path, ['a', 'b'])
  data_fixtures.write_rgb(str(tmp_path / 'input' / 'extra1.png'), np.zeros((4, 4, 3), np.uint8))
  data_fixtures.write_rgb(str(tmp_path / 'target' / 'lonely.png'), np.zeros((4, 4, 3), np.uint8))
  # File names with extensions, each under the folder that lacks its partner.
  with pytest.raises(ValueError, match=r'In .*input but missing from .*target: extra1\.png\.\n.*'
                     r'In .*target but missing from .*input: lonely\.png\.'):
    paired_files.PairedFolderSource(tmp_path)


def test_size_mismatch_and_truncated_file_are_named_or_skipped(tmp_path):
  data_fixtures.write_pair_folder(tmp_path, ['a', 'b', 'c'])
  data_fixtures.write_rgb(str(tmp_path / 'target' / 'b.png'), np.zeros((12, 15, 3), np.uint8))
  data = (tmp_path / 'input' / 'c.png').read_bytes()
  (tmp_path / 'input' / 'c.png').write_bytes(data[:len(data) // 2])
  src = paired_files.PairedFolderSource(tmp_path)
  assert src[0]['name'] == 'a'
  mismatch = r'input/b\.png is \(12, 16, 3\).*target/b\.png is \(12, 15'
  with pytest.raises(ValueError, match=mismatch):
    src[1]
  with pytest.raises(image_ops.ImageReadError, match=r'input/c\.png.*truncated'):
    src[2]
  skip = paired_files.PairedFolderSource(tmp_path, on_error='skip')
  assert skip[0] is not None and skip[1] is None and skip[2] is None
  assert skip.num_skipped == 2


# ----------------------------------------------------------------------------
# SIDD: scene folders, the crop tool and the .mat validation blocks.


def _write_sidd_medium(root, shape=(20, 14, 3)):
  """Two scenes x one image pair each, in the SIDD-Medium naming."""
  rng = np.random.default_rng(0)
  pairs = {}
  for scene, sid in (('0001_001_S6_00100_00060_3200_L', '0001'),
                     ('0002_001_S6_00100_00020_3200_N', '0002')):
    gt = rng.integers(0, 256, shape, dtype=np.uint8)
    noisy = (gt // 2 + 3).astype(np.uint8)
    image_ops.write_image(root / 'Data' / scene / f'{sid}_NOISY_SRGB_010.PNG', noisy)
    image_ops.write_image(root / 'Data' / scene / f'{sid}_GT_SRGB_010.PNG', gt)
    pairs[f'{sid}_SRGB_010'] = (noisy, gt)
  return pairs


def test_sidd_medium_source(tmp_path):
  pairs = _write_sidd_medium(tmp_path)
  src = datasets.make_source('sidd_medium', root=str(tmp_path))
  assert len(src) == 2 and src[0]['name'] == '0001_SRGB_010'
  np.testing.assert_array_equal(src[1]['lq'], pairs['0002_SRGB_010'][0])
  np.testing.assert_array_equal(src[1]['gt'], pairs['0002_SRGB_010'][1])


def test_crop_positions_follow_the_official_script():
  # SIDD-Medium frames are e.g. 3000x5328: 512 crops, step 384, plus a border-aligned last one.
  assert prepare_sidd.crop_starts(1000) == [0, 384, 488]
  assert prepare_sidd.crop_starts(896) == [0, 384]  # Ends exactly at the border: no extra.
  assert prepare_sidd.crop_starts(1000, thresh_size=200) == [0, 384]
  with pytest.raises(ValueError, match='smaller than the crop'):
    prepare_sidd.crop_starts(500)


@pytest.mark.parametrize('num_workers', [0, 2])
def test_prepare_sidd_writes_aligned_crops_and_resumes(tmp_path, num_workers):
  pairs = _write_sidd_medium(tmp_path / 'in')
  out = tmp_path / 'out'
  total = prepare_sidd.prepare(str(tmp_path / 'in'), str(out), num_workers=num_workers,
                               crop_size=8, step=6)
  # 20x14 with crop 8 step 6: rows [0, 6, 12], cols [0, 6] -> 6 crops per pair.
  assert total == 12
  names = sorted(os.listdir(out / 'input_crops'))
  assert names == sorted(os.listdir(out / 'gt_crops'))
  assert names[:2] == ['0001_SRGB_010_s001.PNG', '0001_SRGB_010_s002.PNG']
  noisy, gt = pairs['0002_SRGB_010']
  crop = paired_files.PairedFolderSource(out, 'input_crops', 'gt_crops')
  item = crop[names.index('0002_SRGB_010_s004.PNG')]  # 4th = row 1 (top 6), col 1 (left 6).
  np.testing.assert_array_equal(item['lq'], noisy[6:14, 6:14])
  np.testing.assert_array_equal(item['gt'], gt[6:14, 6:14])
  assert prepare_sidd.prepare(str(tmp_path / 'in'), str(out), num_workers=0, crop_size=8,
                              step=6) == 0  # Already done: nothing rewritten.


def test_prepare_sidd_npy_crops_train_like_png_crops(tmp_path):
  _write_sidd_medium(tmp_path / 'in')
  for fmt in ('png', 'npy'):
    prepare_sidd.prepare(str(tmp_path / 'in'), str(tmp_path / fmt), num_workers=0, crop_size=8,
                         step=6, fmt=fmt)
  png = paired_files.PairedFolderSource(tmp_path / 'png', 'input_crops', 'gt_crops')
  npy = paired_files.PairedFolderSource(tmp_path / 'npy', 'input_crops', 'gt_crops')
  assert sorted(os.listdir(tmp_path / 'npy' / 'gt_crops'))[0] == '0001_SRGB_010_s001.npy'
  assert [png[i]['name'] for i in range(len(png))] == [npy[i]['name'] for i in range(len(npy))]
  # The same training batches from either format.
  kwargs = dict(batch_size=4, crop_size=6, seed=0)
  a = input_pipeline.create_train_iter(png, **kwargs)
  b = input_pipeline.create_train_iter(npy, **kwargs)
  for _ in range(4):
    x, y = next(a), next(b)
    np.testing.assert_array_equal(x['lq'], y['lq'])
    np.testing.assert_array_equal(x['gt'], y['gt'])
  with pytest.raises(ValueError, match="format must be one of"):
    prepare_sidd.prepare(str(tmp_path / 'in'), str(tmp_path / 'x'), num_workers=0, fmt='jpg')


def test_prepare_stops_rather_than_mixing_crops(tmp_path):
  _write_sidd_medium(tmp_path / 'in')
  out = tmp_path / 'out'
  prepare_sidd.prepare(str(tmp_path / 'in'), str(out), num_workers=0, crop_size=8, step=6)
  with pytest.raises(errors.OutputExistsError, match=r"crop_settings.json.*'step': 6.*another "
                     r'--output_dir'):
    prepare_sidd.prepare(str(tmp_path / 'in'), str(out), num_workers=0, crop_size=8, step=4)
  (out / 'crop_settings.json').unlink()  # Crops whose settings nobody recorded.
  with pytest.raises(errors.OutputExistsError, match='already holds files'):
    prepare_sidd.prepare(str(tmp_path / 'in'), str(out), num_workers=0, crop_size=8, step=6)


def test_gopro_crop_positions_follow_the_official_script():
  # A 1280x720 frame, 512 crops, step 256: the last row is flush with the bottom border.
  assert prepare.crop_boxes(720, 1280, prepare_gopro.CROP_SIZE, prepare_gopro.STEP) == [
      (0, 0), (0, 256), (0, 512), (0, 768), (208, 0), (208, 256), (208, 512), (208, 768)]
  # The same frame scaled down 16x (45x80, crop 32, step 16).
  assert prepare.crop_boxes(45, 80, 32, 16) == [
      (0, 0), (0, 16), (0, 32), (0, 48), (13, 0), (13, 16), (13, 32), (13, 48)]


@pytest.mark.parametrize('layout', ['prepared', 'raw'])
def test_prepare_gopro_crops_are_what_configs_gopro_trains_on(tmp_path, layout):
  if layout == 'prepared':
    written = data_fixtures.write_pair_folder(tmp_path / 'train', ['GOPR0372_07_00-000047'],
                                              size=(45, 80))
    (lq, gt), = written.values()
    name = 'GOPR0372_07_00-000047'
  else:
    written = data_fixtures.write_pair_folder(tmp_path / 'train' / 'GOPR0372_07_00', ['000047'],
                                              'blur', 'sharp', size=(45, 80))
    lq, gt = written['000047']
    name = 'GOPR0372_07_00_000047'
  assert prepare_gopro.prepare(str(tmp_path), num_workers=0, crop_size=32, step=16) == 8
  spec = gopro_config.get_config().data.train.to_dict()
  src = datasets.create_source({**spec, 'root': str(tmp_path)})
  assert [src[i]['name'] for i in range(len(src))] == [f'{name}_s{i:03d}' for i in range(1, 9)]
  item = src[6]  # s007: second row (top 13), third column (left 32).
  np.testing.assert_array_equal(item['lq'], lq[13:45, 32:64])
  np.testing.assert_array_equal(item['gt'], gt[13:45, 32:64])
  assert prepare_gopro.prepare(str(tmp_path), num_workers=0, crop_size=32, step=16) == 0
  with pytest.raises(errors.OutputExistsError, match="'step': 16"):
    prepare_gopro.prepare(str(tmp_path), num_workers=0, crop_size=32, step=8)


def test_prepare_gopro_program(tmp_path):
  data_fixtures.write_pair_folder(tmp_path / 'GoPro' / 'train', ['a'], size=(40, 40))
  run = lambda *args: subprocess.run(
      [sys.executable, '-m', 'hinet_jax.prepare_gopro', *args], capture_output=True, text=True,
      timeout=120, check=False)
  missing = run(f'--input_dir={tmp_path / "nope"}')
  assert missing.returncode == 2 and 'Traceback' not in missing.stderr
  assert f'--input_dir={tmp_path / "nope"} does not exist' in missing.stderr
  ok = run(f'--input_dir={tmp_path / "GoPro"}', f'--output_dir={tmp_path / "out"}',
           '--crop_size=32', '--step=16', '--num_workers=0', '--format=npy')
  assert ok.returncode == 0, ok.stderr
  assert sorted(os.listdir(tmp_path / 'out' / 'train' / 'sharp_crops')) == [
      'a_s001.npy', 'a_s002.npy', 'a_s003.npy', 'a_s004.npy']


def test_sidd_validation_blocks(tmp_path):
  noisy_path, gt_path, noisy, gt = data_fixtures.write_sidd_mats(tmp_path, (2, 3, 8, 8, 3))
  src = datasets.make_source('sidd_val', noisy_mat=noisy_path, gt_mat=gt_path,
                             expected_shape=None)
  assert len(src) == 6
  item = src[5]
  assert item['name'] == '0001_02'
  np.testing.assert_array_equal(item['lq'], noisy[1, 2])
  np.testing.assert_array_equal(item['gt'], gt[1, 2])
  assert '_arrays' not in {k for k, v in src.__getstate__().items() if v is not None}


def test_sidd_validation_bad_files(tmp_path):
  noisy_path, gt_path, _, _ = data_fixtures.write_sidd_mats(tmp_path, (2, 3, 8, 8, 3))
  with pytest.raises(ValueError, match=r'ValidationNoisyBlocksSrgb\.mat.*\(2, 3, 8, 8, 3\) uint8, '
                     r'expected \(40, 32, 256, 256, 3\)'):
    sidd_mat.SiddValidationSource(noisy_path, gt_path)  # The default expects the real shape.
  bad = tmp_path / 'bad'
  bad.mkdir()
  data_fixtures.write_sidd_mats(bad, (2, 3, 8, 8, 3), gt_shape=(2, 3, 8, 4, 3))
  with pytest.raises(ValueError, match=r'ValidationNoisyBlocksSrgb\.mat is .* but .*GtBlocks'):
    sidd_mat.SiddValidationSource(bad / 'ValidationNoisyBlocksSrgb.mat',
                                  bad / 'ValidationGtBlocksSrgb.mat', expected_shape=None)
  import scipy.io  # pylint: disable=g-import-not-at-top
  scipy.io.savemat(tmp_path / 'wrong.mat', {'Something': np.zeros((2, 2), np.uint8)})
  with pytest.raises(ValueError, match=r"wrong\.mat has no variable 'ValidationNoisyBlocksSrgb'"):
    sidd_mat.SiddValidationSource(tmp_path / 'wrong.mat', gt_path, expected_shape=None)
  with pytest.raises(FileNotFoundError, match='nope.mat'):
    sidd_mat.SiddValidationSource(tmp_path / 'nope.mat', gt_path)


def test_sidd_validation_mat_v73(tmp_path):
  pytest.importorskip('h5py')
  rng = np.random.default_rng(0)
  noisy = rng.integers(0, 256, (2, 2, 4, 5, 3), dtype=np.uint8)
  data_fixtures.write_mat73(tmp_path / 'n.mat', 'ValidationNoisyBlocksSrgb', noisy)
  data_fixtures.write_mat73(tmp_path / 'g.mat', 'ValidationGtBlocksSrgb', noisy // 2)
  src = sidd_mat.SiddValidationSource(tmp_path / 'n.mat', tmp_path / 'g.mat', expected_shape=None)
  assert len(src) == 4 and src.shape == (2, 2, 4, 5, 3)
  np.testing.assert_array_equal(src[3]['lq'], noisy[1, 1])
  np.testing.assert_array_equal(src[3]['gt'], noisy[1, 1] // 2)


# ----------------------------------------------------------------------------
# REDS, Rain13k, GoPro layouts.


def _write_reds_split(root, split, seqs, frames):
  """REDS nested layout: blur JPEGs and sharp PNGs per <seq>/<frame:08d>."""
  blur, sharp = ('train_blur_jpeg', 'train_sharp') if split == 'train' else (
      'val_blur_jpeg', 'val_sharp')
  rng = np.random.default_rng(0)
  for seq in seqs:
    for f in range(frames):
      lq, gt = data_fixtures.random_pair(rng, 4, 4)
      data_fixtures.write_rgb(str(root / split / blur / seq / f'{f:08d}.jpg'), lq)
      data_fixtures.write_rgb(str(root / split / sharp / seq / f'{f:08d}.png'), gt)


def test_reds_train_val_and_val300(tmp_path):
  _write_reds_split(tmp_path, 'train', ['000', '001'], 3)
  _write_reds_split(tmp_path, 'val', ['000', '029'], 20)
  train = layouts.reds_source(tmp_path, 'train')
  assert len(train) == 6 and train[4]['name'] == '001_00000001'
  assert len(layouts.reds_source(tmp_path, 'val')) == 40
  val300 = datasets.make_source('reds', root=str(tmp_path), split='val_300')
  # Official rule (make_val_300 copies '*9.*'): frames 9, 19, ... of each sequence.
  assert [val300[i]['name'] for i in range(len(val300))] == [
      '000_00000009', '000_00000019', '029_00000009', '029_00000019']
  assert val300[0]['lq'].shape == val300[0]['gt'].shape == (4, 4, 3)
  with pytest.raises(ValueError, match='val_300'):
    layouts.reds_source(tmp_path, 'test')


def test_reds_flattened_val300_folder(tmp_path):
  data_fixtures.write_pair_folder(tmp_path / 'val', ['000_00000009'], 'blur_300', 'sharp_300',
                                  lq_ext='.jpg')
  assert layouts.reds_source(tmp_path, 'val_300')[0]['name'] == '000_00000009'


def test_rain13k_splits_by_name(tmp_path):
  data_fixtures.write_pair_folder(tmp_path / 'train', ['1', '2'], lq_ext='.jpg', gt_ext='.jpg')
  data_fixtures.write_pair_folder(tmp_path / 'test' / 'Rain100H', ['norain-1'])
  data_fixtures.write_pair_folder(tmp_path / 'test' / 'Test100', ['1', '2', '3'])
  assert len(layouts.rain13k_source(tmp_path, 'train')) == 2
  assert layouts.rain13k_source(tmp_path, 'rain100h')[0]['name'] == 'norain-1'
  assert len(datasets.make_source('rain13k', root=str(tmp_path), split='Test100')) == 3
  with pytest.raises(FileNotFoundError, match='Test1200'):
    layouts.rain13k_source(tmp_path, 'Test1200')
  with pytest.raises(ValueError, match='Unknown Rain13k split .*Rain100L'):
    layouts.rain13k_source(tmp_path, 'Rain200')


def test_rain13k_config_validates_on_the_five_test_sets(tmp_path):
  for i, name in enumerate(layouts.RAIN13K_TEST_SETS):
    data_fixtures.write_pair_folder(tmp_path / 'test' / name, [f'{j}' for j in range(i + 1)],
                                    lq_ext='.jpg', gt_ext='.jpg', size=(8, 8))
  config = rain13k_config.get_config().data.val
  assert tuple(config.sets) == layouts.RAIN13K_TEST_SETS
  config.root = str(tmp_path)
  sources = datasets.create_val_sources(config)
  assert list(sources) == ['Test100', 'Rain100H', 'Rain100L', 'Test2800', 'Test1200']
  assert [len(s) for s in sources.values()] == [1, 2, 3, 4, 5]
  assert sources['Test2800'].pairs[0][0].startswith(str(tmp_path / 'test' / 'Test2800'))
  # A mapping of sets: each set's fields override the shared ones.
  test1200 = str(tmp_path / 'test' / 'Test1200')
  sources = datasets.create_val_sources({'kind': 'rain13k', 'root': str(tmp_path), 'sets': {
      'b': {'split': 'Rain100L'}, 'a': {'kind': 'folder', 'root': test1200}}})
  assert list(sources) == ['b', 'a'] and [len(s) for s in sources.values()] == [3, 5]
  with pytest.raises(ValueError, match='sets is empty'):
    datasets.create_val_sources({'kind': 'rain13k', 'root': str(tmp_path), 'sets': ()})


def test_single_validation_source_is_named_val(tmp_path):
  data_fixtures.write_pair_folder(tmp_path, ['a', 'b'])
  config = sidd_config.get_config().data.val
  assert 'sets' not in config
  sources = datasets.create_val_sources({'kind': 'folder', 'root': str(tmp_path)})
  assert list(sources) == ['val'] and len(sources['val']) == 2


def test_gopro_prepared_and_raw_layouts(tmp_path):
  data_fixtures.write_pair_folder(tmp_path / 'prep' / 'test', ['GOPR0384_11_00-000001'])
  assert len(layouts.gopro_source(tmp_path / 'prep', 'test')) == 1
  for seq in ('GOPR0372_07_00', 'GOPR0374_11_00'):
    data_fixtures.write_pair_folder(tmp_path / 'raw' / 'train' / seq, ['000047', '000048'],
                                    'blur', 'sharp')
  src = datasets.make_source('gopro', root=str(tmp_path / 'raw'), split='train')
  assert len(src) == 4 and src[2]['name'] == 'GOPR0374_11_00_000047'


# ----------------------------------------------------------------------------
# Demo set and the factory.


def test_demo_split_by_image_and_deterministic():
  assert not set(demo_set.DEMO_TRAIN_IMAGES) & set(demo_set.DEMO_VAL_IMAGES)
  train = demo_set.DemoSource('train', repeats=2, images=('astronaut', 'coins'))
  assert len(train) == 4
  a, b = train[0], train[0]
  np.testing.assert_array_equal(a['lq'], b['lq'])  # Same index -> same noise.
  assert not np.array_equal(train[0]['lq'], train[2]['lq'])  # Next pass -> new noise.
  np.testing.assert_array_equal(train[0]['gt'], train[2]['gt'])
  residual = a['lq'].astype(float) - a['gt']
  mid = (a['gt'] > 60) & (a['gt'] < 195)  # Away from clipping.
  assert 23 < residual[mid].std() < 27  # sigma=25 on the 0-255 scale.
  other = demo_set.DemoSource('train', seed=1, repeats=1, images=('astronaut',))
  assert not np.array_equal(other[0]['lq'], a['lq'])
  val = datasets.make_source('demo', split='val')
  shapes = {val[i]['lq'].shape for i in range(len(val))}
  assert shapes == {(256, 256, 3)} and len(val) == 16
  names = [val[i]['name'] for i in range(len(val))]
  assert len(set(names)) == 16 and names[0] == 'coffee_0_0'
  assert all(n.split('_')[0] in ('coffee', 'camera', 'coins', 'hubble') for n in names)


@pytest.mark.parametrize('degradation', ['blur', 'jpeg'])
def test_demo_other_degradations(degradation):
  src = demo_set.DemoSource('val', degradation=degradation, images=('coffee',), val_crop=64)
  a, b = src[3], src[3]
  np.testing.assert_array_equal(a['lq'], b['lq'])
  assert a['lq'].shape == a['gt'].shape and not np.array_equal(a['lq'], a['gt'])


def test_make_source_errors():
  with pytest.raises(ValueError, match="Unknown data source kind 'lmdb'.*folder"):
    datasets.make_source('lmdb')
  with pytest.raises(ValueError, match="Bad arguments for source kind 'folder'.*input_dir"):
    datasets.make_source('folder', root='/x', input_folder='in')
  with pytest.raises(ValueError, match=r"kind 'folder' needs root \(got None\)"):
    datasets.create_source({'kind': 'folder', 'root': None, 'input_dir': 'input'})
  with pytest.raises(ValueError, match='degradation'):
    demo_set.DemoSource(degradation='rain')
  src = datasets.create_source({'kind': 'demo', 'split': 'val', 'images': ('coins',)})
  assert len(src) == 1


# ----------------------------------------------------------------------------
# TFDS: build ArrayRecord from a manual dir, read back as a grain source.


def test_tfds_sidd_builder_roundtrip(tmp_path):
  from hinet_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  written = data_fixtures.write_pair_folder(manual / 'train', ['0001_SRGB_010_s001',
                                                               '0001_SRGB_010_s002'],
                                            'input_crops', 'gt_crops')
  _, _, noisy, gt = data_fixtures.write_sidd_mats(manual, (2, 2, 8, 8, 3))
  builder = tfds_builders.prepare('hinet_sidd', str(tmp_path / 'tfds'), str(manual))
  assert set(builder.info.splits) == {'train', 'validation'}
  train = datasets.make_source('tfds', name='hinet_sidd', split='train',
                               data_dir=str(tmp_path / 'tfds'))
  items = {train[i]['name']: train[i] for i in range(len(train))}  # TFDS shuffles records.
  assert sorted(items) == sorted(written)
  for name, (lq, g) in written.items():
    np.testing.assert_array_equal(items[name]['lq'], lq)
    np.testing.assert_array_equal(items[name]['gt'], g)
  val = tfds_source.TfdsSource('hinet_sidd', 'validation', data_dir=str(tmp_path / 'tfds'))
  blocks = {val[i]['name']: val[i] for i in range(len(val))}
  assert len(blocks) == 4
  np.testing.assert_array_equal(blocks['0001_00']['lq'], noisy[1, 0])
  np.testing.assert_array_equal(blocks['0001_00']['gt'], gt[1, 0])


def test_tfds_builder_rejects_mismatched_pair(tmp_path):
  from hinet_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  manual = tmp_path / 'manual'
  data_fixtures.write_pair_folder(manual / 'test', ['a'])
  data_fixtures.write_rgb(str(manual / 'test' / 'target' / 'a.png'), np.zeros((5, 5, 3), np.uint8))
  with pytest.raises(ValueError, match=r'input/a\.png is \(16, 12\).*target/a\.png'):
    tfds_builders.prepare('hinet_gopro', str(tmp_path / 'tfds'), str(manual))
