"""grain input pipelines: random-crop training batches and fixed-shape eval batches.

Training (`create_train_iter`):
  source -> this process's slice [process_index::process_count] -> shuffle
  (reshuffled every epoch) -> repeat -> reflect-pad pairs smaller than the crop
  + random crop + dihedral augmentation + float32 (one grain RandomMap, so the
  output is a pure function of (seed, step)) -> batch -> optional worker
  processes -> optional device placement.
Each process draws its own stream: the shuffle and the crops are seeded by
`stream_seed(seed, process_index, stream)`, so hosts do not repeat each
other's order and windows, and the loop can re-seed every host after a change
of the process count (`stream=restored_step`).
The returned grain DatasetIterator supports get_state()/set_state() and
`grain.checkpoint.CheckpointSave/CheckpointRestore` inside an orbax Composite;
its state format depends on num_workers and on the process count, so keep both
fixed across a resume (or start a new stream).

Evaluation: `create_eval_batches` for sets of equal-sized images (fixed batch
shape, last batch padded with mask 0, so the eval step compiles once) and
`iterate_pairs` for full frames of varying size (evaluated one by one).
"""

import collections
import concurrent.futures
import dataclasses
import functools
import math

import grain
import jax
import numpy as np

from hinet_jax.data import image_ops

AUGMENT_MODES = ('dihedral', 'dihedral_half', 'none')


@dataclasses.dataclass(frozen=True)
class CropAugmentToFloat(grain.transforms.RandomMap):
  """Paired random crop, the same dihedral transform on both, then float32 [0, 1].

  Attributes:
    crop_size: int or (h, w).
    augment: 'dihedral', 'dihedral_half' or 'none' (see image_ops.sample_dihedral).
  """
  crop_size: int
  augment: str = 'dihedral'

  def random_map(self, element, rng):
    """Args: element: source item; rng: grain's per-record Generator. Returns {'lq','gt'}."""
    k = image_ops.sample_dihedral(rng, self.augment)
    ch, cw = image_ops._pair_size(self.crop_size)  # pylint: disable=protected-access
    # A quarter turn swaps H and W, so cut a (cw, ch) window for odd k: every
    # output then has shape (ch, cw) and non-square crops batch.
    window = (ch, cw) if k % 2 == 0 else (cw, ch)
    try:
      lq, gt = pad_pair_to_crop(element['lq'], element['gt'], window)
      lq, gt = image_ops.paired_random_crop(lq, gt, window, rng)
    except ValueError as e:
      raise ValueError(f'Training pair {element.get("name")!r}: {e}') from None
    return {'lq': image_ops.to_float32(image_ops.dihedral(lq, k)),
            'gt': image_ops.to_float32(image_ops.dihedral(gt, k))}


def pad_pair_to_crop(lq, gt, size):
  """Reflect-pads a pair at the bottom/right so both sides reach the crop size.

  As HINet's `padding` (basicsr/utils/img_util.py), which runs before the random
  crop: cv2.BORDER_REFLECT repeats the edge pixel (`fedcba|abcdef|fedcba`),
  which is numpy's 'symmetric' mode (numpy's 'reflect' would skip the edge).
  Sides already at least the crop are left as they are.

  Args:
    lq: (H, W, C) degraded image.
    gt: (H, W, C) clean image of the same H and W.
    size: crop size, int or (h, w).

  Returns:
    (lq, gt), padded to at least `size` (the inputs themselves when large enough).

  Raises:
    ValueError: lq and gt differ in height or width.
  """
  h, w = lq.shape[:2]
  if gt.shape[:2] != (h, w):
    raise ValueError(f'lq is {h}x{w} but gt is {gt.shape[0]}x{gt.shape[1]}: the pair is '
                     'misaligned; fix or remove it')
  ch, cw = image_ops._pair_size(size)  # pylint: disable=protected-access
  pad_h, pad_w = max(0, ch - h), max(0, cw - w)
  if not pad_h and not pad_w:
    return lq, gt
  widths = ((0, pad_h), (0, pad_w), (0, 0))
  return np.pad(lq, widths, mode='symmetric'), np.pad(gt, widths, mode='symmetric')


def stream_seed(seed, process_index=0, stream=0):
  """The seed of one process's data stream (its shuffle and its crops/augmentations).

  Process 0 on stream 0 keeps `seed` itself, so a single-process run draws the
  batches it always did; every other (process, stream) gets its own seed, a hash
  of all three (BasicSR seeds each rank with `manual_seed + rank` for the same
  reason, HINet basicsr/train.py `parse_options`).

  Args:
    seed: the run's data seed (>= 0).
    process_index: this JAX process.
    stream: an int >= 0 mixed into every process's seed; 0 is the original stream.

  Returns:
    int seed in [0, 2**32).
  """
  if seed < 0 or process_index < 0 or stream < 0:
    raise ValueError(f'seed ({seed}), process_index ({process_index}) and stream ({stream}) '
                     'must be >= 0')
  if process_index == 0 and stream == 0:
    return int(seed)
  return int(np.random.SeedSequence([seed, process_index, stream]).generate_state(1)[0])


def _process_info(process_index, process_count):
  """Defaults to the real JAX process index/count; tests pass their own."""
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= pi < pc:
    raise ValueError(f'process_index {pi} is not in [0, {pc})')
  return pi, pc


def local_batch_size(batch_size, process_count):
  """Per-process batch = global batch / process count, which must divide.

  Args:
    batch_size: global batch size.
    process_count: number of JAX processes.

  Returns:
    int per-process batch size.
  """
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'The global batch_size {batch_size} must be a positive multiple of the '
                     f'number of JAX processes ({process_count}): change batch_size.')
  return batch_size // process_count


def shard_dataset(ds, process_index, process_count):
  """This process's disjoint slice of a MapDataset: elements i with i % count == index.

  Args:
    ds: grain.MapDataset.
    process_index: this process.
    process_count: number of processes.

  Returns:
    The sliced MapDataset (the slices of all processes cover ds exactly once).
  """
  if process_count == 1:
    return ds
  if len(ds) < process_count:
    raise ValueError(f'The dataset has {len(ds)} items, fewer than the {process_count} JAX '
                     'processes that each need a shard')
  return ds[process_index::process_count]


def _check_sharding(data_sharding, shape):
  """Fails early, naming the sizes, if the global batch cannot be sharded."""
  try:
    data_sharding.shard_shape(shape)
  except ValueError as e:
    raise ValueError(f'The global batch of shape {shape} cannot be split by the data '
                     f'sharding {data_sharding}: make batch_size a multiple of the number of '
                     f'devices on the batch axis ({e})') from None


def _to_global_arrays(data_sharding, batch):
  """Assembles each process's local batch into one globally sharded jax.Array.

  grain.experimental.device_put is single-process only (API_NOTES.md §1), so
  this uses make_array_from_process_local_data, which works in both cases.
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(data_sharding, x), batch)


def create_train_dataset(source, *, batch_size, crop_size, augment='dihedral', seed=0,
                         num_workers=0, num_threads=2, prefetch=8, data_sharding=None,
                         shard_by_process=True, process_index=None, process_count=None,
                         worker_buffer_size=2, device_prefetch=2, stream=0):
  """Builds the infinite training IterDataset (see `create_train_iter` for the arguments)."""
  if augment not in AUGMENT_MODES:
    raise ValueError(f'augment must be one of {AUGMENT_MODES}, got {augment!r}')
  pi, pc = _process_info(process_index, process_count)
  local_bs = local_batch_size(batch_size, pc)
  ch, cw = image_ops._pair_size(crop_size)  # pylint: disable=protected-access
  if data_sharding is not None:
    _check_sharding(data_sharding, (batch_size, ch, cw, 3))
  ds = grain.MapDataset.source(source)
  if shard_by_process:
    ds = shard_dataset(ds, pi, pc)
  # shuffle before repeat: grain reshuffles each epoch (the index carries the
  # epoch); random_map after repeat draws new crops/augmentations every epoch.
  ds = (ds.seed(stream_seed(seed, pi, stream)).shuffle().repeat()
        .random_map(CropAugmentToFloat((ch, cw), augment)))
  # Batch on the IterDataset so items a source skipped (None) are dropped first.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch))
  it_ds = it_ds.batch(local_bs, drop_remainder=True)
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer_size))
  if data_sharding is not None:
    # Placed on the devices inside the prefetch thread: the training loop's next() only takes a
    # ready batch (0.09 ms instead of 0.55 on the demo, time the host would not spend launching).
    it_ds = it_ds.map(functools.partial(_to_global_arrays, data_sharding))
    it_ds = grain.experimental.ThreadPrefetchIterDataset(
        it_ds, prefetch_buffer_size=device_prefetch)
  return it_ds


def create_train_iter(source, *, batch_size, crop_size, augment='dihedral', seed=0,
                      num_workers=0, num_threads=2, prefetch=8, data_sharding=None,
                      shard_by_process=True, process_index=None, process_count=None,
                      worker_buffer_size=2, device_prefetch=2, stream=0):
  """Creates the infinite, resumable training iterator.

  Each batch is `{'lq', 'gt'}`, float32 NHWC in [0, 1]: jax.Arrays with the
  global batch shape laid out by `data_sharding`, or this process's numpy batch
  when data_sharding is None. With num_workers > 0, absl flags must be parsed
  (run under app.run, or call absl.flags.FLAGS.mark_as_parsed()), the main
  module needs an `if __name__ == '__main__'` guard (workers are spawned), and
  the iterator should be closed with `.close()` when done.

  Args:
    source: random-access source of {'lq', 'gt', 'name'} items.
    batch_size: global batch size (over all processes).
    crop_size: training crop, int or (h, w); pairs smaller than it are
      reflect-padded first (`pad_pair_to_crop`).
    augment: 'dihedral' (8-way uniform), 'dihedral_half' (official SIDD
      scheme) or 'none'.
    seed: shuffle and augmentation seed, mixed with the process index and
      `stream` (`stream_seed`), so every process draws its own stream.
    num_workers: grain worker processes (0 = in the main process).
    num_threads: reader threads (per worker when num_workers > 0); 1-2 is
      best for GIL-bound decoding (API_NOTES.md §1).
    prefetch: read-ahead elements per reader.
    data_sharding: NamedSharding of the batch (e.g. P('data')), or None.
    shard_by_process: give each JAX process a disjoint slice of the source
      (False: every process reads all of it, in its own order).
    process_index: override jax.process_index() (tests).
    process_count: override jax.process_count() (tests).
    worker_buffer_size: batches buffered per worker.
    device_prefetch: batches placed on device ahead of use.
    stream: an int >= 0 mixed into every process's seeds. 0 (the default)
      gives the original streams, which a saved iterator state resumes. When a
      saved state cannot be used (the number of processes changed, so grain's
      per-process states no longer match), pass a new value that every process
      agrees on, e.g. the restored step: the data then continues on fresh,
      deterministic per-process streams instead of replaying the first batches.

  Returns:
    grain DatasetIterator.
  """
  return iter(create_train_dataset(
      source, batch_size=batch_size, crop_size=crop_size, augment=augment, seed=seed,
      num_workers=num_workers, num_threads=num_threads, prefetch=prefetch,
      data_sharding=data_sharding, shard_by_process=shard_by_process,
      process_index=process_index, process_count=process_count,
      worker_buffer_size=worker_buffer_size, device_prefetch=device_prefetch, stream=stream))


# ----------------------------------------------------------------------------
# Evaluation.


def _read_ahead(source, indices, num_threads):
  """Yields source[i] for i in indices, reading up to 2*num_threads items ahead."""
  if num_threads <= 1:
    for i in indices:
      yield source[i]
    return
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    pending = collections.deque()
    for i in indices:
      pending.append(pool.submit(source.__getitem__, i))
      if len(pending) >= 2 * num_threads:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def iterate_pairs(source, *, num_threads=2):
  """Yields every pair of a source as float32, for per-image (full-frame) evaluation.

  Items a source skipped (None, with on_error='skip') are left out.

  Args:
    source: random-access source.
    num_threads: reader threads.

  Yields:
    {'lq': float32 HWC [0, 1], 'gt': same, 'name': str}.
  """
  for item in _read_ahead(source, range(len(source)), num_threads):
    if item is None:
      continue
    yield {'lq': image_ops.to_float32(item['lq']), 'gt': image_ops.to_float32(item['gt']),
           'name': item['name']}


def _pad_item(x, pad_to):
  """Applies the eval padding rule to one HWC image (see create_eval_batches)."""
  if pad_to is None:
    return x
  if isinstance(pad_to, int):
    return image_ops.pad_to_multiple(x, pad_to)[0]
  th, tw = pad_to
  h, w = x.shape[:2]
  if h > th or w > tw:
    raise ValueError(f'image of {h}x{w} is larger than pad_to={pad_to}')
  return np.pad(x, ((0, th - h), (0, tw - w), (0, 0)), mode='reflect')


def create_eval_batches(source, *, batch_size, pad_to=None, shard_by_process=False,
                        process_index=None, process_count=None, num_threads=2):
  """Yields fixed-shape evaluation batches with a validity mask.

  All batches have the same shape; the last one is padded with zero images,
  mask 0 and name ''. With pad_to, every image is reflect-padded at the
  bottom/right (to a multiple of an int, or to an exact (H, W)), and 'hw'
  holds the original sizes so metrics can crop back.

  Args:
    source: random-access source of equal-sized images (SIDD blocks, demo
      val tiles); full frames of varying size go through `iterate_pairs`.
    batch_size: images per batch (per process).
    pad_to: None, int multiple, or (H, W).
    shard_by_process: evaluate a disjoint slice per JAX process; every process
      yields the same number of batches.
    process_index: override jax.process_index().
    process_count: override jax.process_count().
    num_threads: reader threads.

  Yields:
    {'lq': float32 (B, H, W, 3), 'gt': same, 'mask': float32 (B,),
     'name': list of B str, 'hw': int32 (B, 2)}.

  Raises:
    ValueError: an image's size differs from the first one (named).
  """
  indices = list(range(len(source)))
  if shard_by_process:
    pi, pc = _process_info(process_index, process_count)
    per_process = math.ceil(len(indices) / pc)
    indices = indices[pi::pc]
  else:
    per_process = len(indices)
  num_batches = math.ceil(per_process / batch_size)
  items = (it for it in _read_ahead(source, indices, num_threads) if it is not None)
  shape = None
  for _ in range(num_batches):
    rows = []
    for item in items:
      lq, gt = _pad_item(item['lq'], pad_to), _pad_item(item['gt'], pad_to)
      shape = shape or lq.shape
      if lq.shape != shape or gt.shape != shape:
        raise ValueError(
            f'Eval image {item["name"]!r} is {item["lq"].shape[:2]} (padded {lq.shape}) but '
            f'the batch shape is {shape}: use pad_to=(H, W), or evaluate full frames with '
            'iterate_pairs')
      rows.append((lq, gt, item['name'], item['lq'].shape[:2]))
      if len(rows) == batch_size:
        break
    if not rows and shape is None:
      return
    yield _stack_eval_rows(rows, batch_size, shape)


def _stack_eval_rows(rows, batch_size, shape):
  """Stacks up to batch_size (lq, gt, name, hw) rows, padding with mask 0."""
  lq = np.zeros((batch_size, *shape), np.float32)
  gt = np.zeros((batch_size, *shape), np.float32)
  mask = np.zeros((batch_size,), np.float32)
  hw = np.zeros((batch_size, 2), np.int32)
  names = [''] * batch_size
  for i, (x, y, name, size) in enumerate(rows):
    lq[i], gt[i] = image_ops.to_float32(x), image_ops.to_float32(y)
    mask[i], names[i], hw[i] = 1.0, name, size
  return {'lq': lq, 'gt': gt, 'mask': mask, 'name': names, 'hw': hw}
