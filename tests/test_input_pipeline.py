"""Tests for hinet_jax.data.input_pipeline: alignment, determinism, resume, sharding, eval batches."""

import time

from absl import flags
import grain
import jax
import numpy as np
import pytest

from hinet_jax.data import demo_set
from hinet_jax.data import image_ops
from hinet_jax.data import input_pipeline
from hinet_jax.data import paired_files

import data_fixtures


def _coord_source(n=6, h=20, w=24):
  """Items whose lq encodes (row, col, item) and gt = lq + 1, as uint16."""
  items = []
  for i in range(n):
    lq = data_fixtures.coord_image(h, w, base=100 + i)
    items.append({'lq': lq, 'gt': lq + 1, 'name': f'c{i}'})
  return data_fixtures.ArraySource(items)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(np.asarray(x[k]), np.asarray(y[k]))


def _undo_augmentation(patch):
  """Returns the k for which inverse_dihedral(patch) is an upright window, else None."""
  for k in range(8):
    p = np.rint(image_ops.inverse_dihedral(patch, k) * 65535).astype(np.int64)
    rows, cols = p[..., 0], p[..., 1]
    if (np.all(np.diff(rows, axis=0) == 1) and np.all(np.diff(rows, axis=1) == 0) and
        np.all(np.diff(cols, axis=1) == 1) and np.all(np.diff(cols, axis=0) == 0)):
      return k
  return None


@pytest.mark.parametrize('augment', ['dihedral', 'dihedral_half', 'none'])
def test_train_batches_stay_aligned_through_crop_and_augment(augment):
  it = input_pipeline.create_train_iter(_coord_source(), batch_size=4, crop_size=(6, 8),
                                        augment=augment, seed=0)
  ks = []
  for batch in _take(it, 12):
    assert batch['lq'].shape == (4, 6, 8, 3) and batch['lq'].dtype == np.float32
    # gt = lq + 1 in every pixel: same window and same transform on both.
    np.testing.assert_allclose(batch['gt'] - batch['lq'], 1 / 65535, rtol=1e-3)
    for patch in batch['lq']:
      k = _undo_augmentation(patch)
      assert k is not None, 'lq patch is not a dihedral transform of an image window'
      ks.append(k)
  if augment == 'none':
    assert set(ks) == {0}
  else:
    assert len(set(ks)) >= 5  # Many of the 8 transforms occurred (48 draws).
  assert 0.0 <= batch['lq'].min() and batch['lq'].max() <= 1.0


def test_same_seed_same_batches_and_epochs_reshuffle():
  src = data_fixtures.constant_source(5)
  make = lambda seed: input_pipeline.create_train_iter(src, batch_size=5, crop_size=4,
                                                       seed=seed)
  a, b, c = _take(make(0), 3), _take(make(0), 3), _take(make(1), 3)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x['lq'], y['lq']) for x, y in zip(a, c))
  orders = [tuple(np.rint(x['lq'][:, 0, 0, 0] * 255).astype(int)) for x in a]
  assert all(sorted(o) == list(range(5)) for o in orders)  # Each epoch is a permutation...
  assert len(set(orders)) > 1  # ...and a different one.


def test_resume_from_state_replays_the_same_batches():
  src = _coord_source()
  kwargs = dict(batch_size=2, crop_size=6, seed=3)
  full = _take(input_pipeline.create_train_iter(src, **kwargs), 7)
  it = input_pipeline.create_train_iter(src, **kwargs)
  _take(it, 4)  # Crosses an epoch boundary (6 items, batch 2).
  state = it.get_state()
  resumed = input_pipeline.create_train_iter(src, **kwargs)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 3), full[4:])


def test_resume_with_worker_process(tmp_path):
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags.
  data_fixtures.write_pair_folder(tmp_path, [f'{i:02d}' for i in range(5)], size=(12, 16))
  src = paired_files.PairedFolderSource(tmp_path)
  kwargs = dict(batch_size=2, crop_size=8, seed=0, num_workers=1, num_threads=1)
  it = input_pipeline.create_train_iter(src, **kwargs)
  try:
    full = _take(it, 5)
  finally:
    it.close()
  it = input_pipeline.create_train_iter(src, **kwargs)
  try:
    _take(it, 2)
    state = it.get_state()
  finally:
    it.close()
  resumed = input_pipeline.create_train_iter(src, **kwargs)
  try:
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), full[2:])
  finally:
    resumed.close()
  # Workers run the same per-record RNG as the main process.
  _assert_batches_equal(full, _take(input_pipeline.create_train_iter(
      src, **{**kwargs, 'num_workers': 0}), 5))


def test_orbax_checkpoint_roundtrip_of_the_iterator(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  src = _coord_source()
  kwargs = dict(batch_size=2, crop_size=6, seed=5)
  full = _take(input_pipeline.create_train_iter(src, **kwargs), 5)
  it = input_pipeline.create_train_iter(src, **kwargs)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    fresh = input_pipeline.create_train_iter(src, **kwargs)
    mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 2), full[3:])


def test_single_process_stream_0_draws_the_batches_it_always_did():
  # Pinned from the pipeline before per-process streams existed: (row, col, item) at the top-left
  # corner and (row, col) at the bottom-right of each crop (the order, windows and transforms).
  expected = [[[[1, 23, 104], [6, 18]], [[3, 9, 101], [8, 4]]],
              [[[14, 13, 100], [19, 8]], [[16, 11, 102], [11, 16]]],
              [[[11, 23, 105], [16, 18]], [[18, 15, 103], [13, 10]]],
              [[[14, 10, 102], [9, 5]], [[13, 11, 101], [18, 6]]]]
  for kwargs in ({}, {'process_index': 0, 'process_count': 1, 'stream': 0}):
    it = input_pipeline.create_train_iter(_coord_source(), batch_size=2, crop_size=6, seed=3,
                                          **kwargs)
    got = []
    for batch in _take(it, 4):
      lq = np.rint(batch['lq'] * 65535).astype(int)
      got.append([[x[0, 0].tolist(), x[-1, -1, :2].tolist()] for x in lq])
    assert got == expected


def _corners(batches):
  """(row, col, item) of every crop's top-left pixel, per batch."""
  return [np.rint(b['lq'][:, 0, 0] * 65535).astype(int).tolist() for b in batches]


def test_each_process_and_stream_draws_its_own_crops():
  src = _coord_source(n=8, h=40, w=48)
  make = lambda pi, shard, stream=0: input_pipeline.create_train_iter(
      src, batch_size=8, crop_size=6, seed=0, process_index=pi, process_count=2,
      shard_by_process=shard, stream=stream)
  # Not sharded: the two processes read the same source but not the same batches.
  assert _corners(_take(make(0, False), 3)) != _corners(_take(make(1, False), 3))
  # Sharded: each position of a step is cut at a different place on each process.
  windows = [[[c[:2] for c in b] for b in _corners(_take(make(pi, True), 3))] for pi in (0, 1)]
  assert windows[0] != windows[1]
  # A new stream is a different, reproducible stream on every process.
  for pi in (0, 1):
    fresh = _corners(_take(make(pi, True, stream=7), 3))
    assert fresh == _corners(_take(make(pi, True, stream=7), 3))
    assert fresh != _corners(_take(make(pi, True), 3))
  assert input_pipeline.stream_seed(5) == 5
  assert len({input_pipeline.stream_seed(5, pi, s) for pi in range(3) for s in range(3)}) == 9
  with pytest.raises(ValueError, match='stream'):
    input_pipeline.stream_seed(5, 0, -1)


def _cv2_border_reflect(p, n):
  """Source index of padded position p for cv2.BORDER_REFLECT (OpenCV `borderInterpolate`)."""
  if n == 1:
    return 0
  while not 0 <= p < n:
    p = -p - 1 if p < 0 else 2 * n - 1 - p
  return p


def _basicsr_padding(lq, gt, gt_size):
  """HINet basicsr/utils/img_util.py `padding`: copyMakeBorder(0, h_pad, 0, w_pad, REFLECT)."""
  h, w = lq.shape[:2]
  rows = [_cv2_border_reflect(r, h) for r in range(h + max(0, gt_size - h))]
  cols = [_cv2_border_reflect(c, w) for c in range(w + max(0, gt_size - w))]
  return lq[rows][:, cols], gt[rows][:, cols]


@pytest.mark.parametrize('h, w, size', [(3, 5, 8), (5, 9, 8), (1, 2, 7), (4, 4, 13)])
def test_small_pairs_are_padded_as_basicsr(h, w, size):
  lq = data_fixtures.coord_image(h, w, base=1)
  gt = lq + 7
  got = input_pipeline.pad_pair_to_crop(lq, gt, size)
  want = _basicsr_padding(lq, gt, size)
  for x, y in zip(got, want):
    assert x.shape == (max(h, size), max(w, size), 3)
    np.testing.assert_array_equal(x, y)
  assert input_pipeline.pad_pair_to_crop(lq, gt, (h, w))[0] is lq  # Large enough: untouched.


def test_pipeline_crops_small_pairs_from_their_padded_image():
  lq = data_fixtures.coord_image(5, 3, base=9)
  src = data_fixtures.ArraySource([{'lq': lq, 'gt': lq + 1, 'name': 'tiny'}])
  padded, _ = _basicsr_padding(lq, lq + 1, 8)
  it = input_pipeline.create_train_iter(src, batch_size=1, crop_size=8, augment='none', seed=0)
  for batch in _take(it, 3):
    np.testing.assert_array_equal(np.rint(batch['lq'][0] * 65535).astype(int), padded)
    np.testing.assert_allclose(batch['gt'] - batch['lq'], 1 / 65535, rtol=1e-3)


def test_process_shards_are_disjoint_and_cover():
  src = data_fixtures.constant_source(10)
  seen = []
  for pi in range(3):
    it = input_pipeline.create_train_iter(src, batch_size=3, crop_size=4, seed=0,
                                          process_index=pi, process_count=3)
    shard_len = len(range(pi, 10, 3))
    values = [int(round(b['lq'][0, 0, 0, 0] * 255)) for b in _take(it, shard_len)]
    assert len(set(values)) == shard_len  # One epoch of this shard, no repeats.
    seen.append(set(values))
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  assert set().union(*seen) == set(range(10))
  with pytest.raises(ValueError, match=r'global batch_size 4 must be a positive multiple of the '
                     r'number of JAX processes \(3\)'):
    input_pipeline.create_train_iter(src, batch_size=4, crop_size=4, seed=0, process_index=0,
                                     process_count=3)


def test_device_placement_with_batch_sharding():
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  src = _coord_source()
  bs = 2 * jax.device_count()
  expected = _take(input_pipeline.create_train_iter(src, batch_size=bs, crop_size=4, seed=0), 2)
  it = input_pipeline.create_train_iter(src, batch_size=bs, crop_size=4, seed=0,
                                        data_sharding=sharding)
  got = _take(it, 2)
  for g in got:
    assert isinstance(g['lq'], jax.Array) and g['lq'].sharding == sharding
  _assert_batches_equal(got, expected)
  if jax.device_count() > 1:
    with pytest.raises(ValueError, match='multiple of the number of devices'):
      input_pipeline.create_train_iter(src, batch_size=jax.device_count() + 1, crop_size=4,
                                       seed=0, data_sharding=sharding)


def test_resume_through_device_prefetch_replays_the_same_batches():
  # The prefetch thread runs ahead of the consumer (and places the batches on the devices); the
  # state must be the consumer's position, not the thread's.
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  kwargs = dict(batch_size=2 * jax.device_count(), crop_size=4, seed=1, data_sharding=sharding,
                device_prefetch=3)
  src = _coord_source()
  full = _take(input_pipeline.create_train_iter(src, **kwargs), 6)
  it = input_pipeline.create_train_iter(src, **kwargs)
  _take(it, 3)
  time.sleep(0.3)  # Let the thread fill its buffer.
  state = it.get_state()
  resumed = input_pipeline.create_train_iter(src, **kwargs)
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 3), full[3:])


def test_misaligned_pair_and_skipped_files_in_the_pipeline(tmp_path):
  lq = np.zeros((12, 16, 3), np.uint8)
  src = data_fixtures.ArraySource([{'lq': lq, 'gt': lq[:10], 'name': 'cut'}])
  it = input_pipeline.create_train_iter(src, batch_size=1, crop_size=32, seed=0)
  with pytest.raises(ValueError, match=r"'cut'.*lq is 12x16 but gt is 10x16"):
    next(it)  # Checked before any padding: a size mismatch is never padded away.
  data_fixtures.write_pair_folder(tmp_path, ['a', 'b', 'c'], size=(12, 16))
  (tmp_path / 'input' / 'b.png').write_bytes(b'\x89PNG broken')
  src = paired_files.PairedFolderSource(tmp_path, on_error='skip')
  it = input_pipeline.create_train_iter(src, batch_size=3, crop_size=8, seed=0)
  assert next(it)['lq'].shape == (3, 8, 8, 3)  # Built from the readable pairs only.
  assert src.num_skipped >= 1


# ----------------------------------------------------------------------------
# Evaluation batches.


def test_eval_batches_fixed_shape_with_mask():
  src = data_fixtures.constant_source(10)
  batches = list(input_pipeline.create_eval_batches(src, batch_size=4))
  assert len(batches) == 3
  assert {b['lq'].shape for b in batches} == {(4, 8, 8, 3)}
  np.testing.assert_array_equal(batches[-1]['mask'], [1, 1, 0, 0])
  assert batches[-1]['name'] == ['008', '009', '', '']
  values = np.concatenate([b['lq'][:, 0, 0, 0] for b in batches]) * 255
  np.testing.assert_allclose(values[:10], np.arange(10), atol=1e-4)
  assert np.all(batches[-1]['lq'][2:] == 0)
  # Masked mean == plain mean over the real items.
  total = sum((b['gt'].mean(axis=(1, 2, 3)) * b['mask']).sum() for b in batches)
  count = sum(b['mask'].sum() for b in batches)
  np.testing.assert_allclose(total / count, np.mean(np.arange(10)) / 255, rtol=1e-6)


def test_eval_batches_sharded_per_process():
  src = data_fixtures.constant_source(7)
  per_process = [list(input_pipeline.create_eval_batches(
      src, batch_size=2, shard_by_process=True, process_index=pi, process_count=2))
                 for pi in range(2)]
  assert [len(b) for b in per_process] == [2, 2]  # Same count on every process.
  names = [[n for b in bs for n, m in zip(b['name'], b['mask']) if m] for bs in per_process]
  assert not set(names[0]) & set(names[1])
  assert sorted(names[0] + names[1]) == [f'{i:03d}' for i in range(7)]


def test_eval_batches_size_errors_and_padding():
  items = [{'lq': np.zeros((8, 8, 3), np.uint8), 'gt': np.zeros((8, 8, 3), np.uint8),
            'name': 'a'},
           {'lq': np.ones((6, 7, 3), np.uint8), 'gt': np.ones((6, 7, 3), np.uint8),
            'name': 'odd'}]
  src = data_fixtures.ArraySource(items)
  with pytest.raises(ValueError, match=r"'odd' is \(6, 7\).*pad_to=\(H, W\).*iterate_pairs"):
    list(input_pipeline.create_eval_batches(src, batch_size=2))
  (batch,) = input_pipeline.create_eval_batches(src, batch_size=2, pad_to=(8, 8))
  assert batch['lq'].shape == (2, 8, 8, 3)
  np.testing.assert_array_equal(batch['hw'], [[8, 8], [6, 7]])
  np.testing.assert_allclose(batch['lq'][1, :6, :7], 1 / 255)


def test_iterate_pairs_yields_float_full_frames_and_skips(tmp_path):
  data_fixtures.write_pair_folder(tmp_path, ['a', 'b'], size=(12, 16))
  (tmp_path / 'target' / 'b.png').write_bytes(b'garbage')
  out = list(input_pipeline.iterate_pairs(paired_files.PairedFolderSource(tmp_path, on_error='skip')))
  assert [o['name'] for o in out] == ['a']
  assert out[0]['lq'].dtype == np.float32 and out[0]['lq'].shape == (12, 16, 3)


def test_demo_val_through_eval_batches():
  val = demo_set.DemoSource('val', images=('coffee', 'coins'), val_crop=128)
  batches = list(input_pipeline.create_eval_batches(val, batch_size=4))
  assert sum(b['mask'].sum() for b in batches) == len(val)
  assert batches[0]['lq'].shape == (4, 128, 128, 3)
