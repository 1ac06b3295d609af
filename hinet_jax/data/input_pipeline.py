"""grain input pipelines: random-crop training batches and fixed-shape eval batches.

Training (`create_train_iter`): this process's slice of the source -> shuffle (new each epoch) ->
repeat -> pad + crop + dihedral + float32 in one grain RandomMap, so a batch is a pure function of
(seed, step) -> batch -> optional workers -> optional device placement. Each process and `stream`
has its own seed (`stream_seed`). The iterator checkpoints with `grain.checkpoint`; its state
depends on num_workers and the process count, so a resume keeps both (or starts a new stream).

Evaluation: `create_eval_batches` for equal-sized images (fixed batch shape, the last batch padded
with mask 0, so the eval step compiles once) and `iterate_pairs` for full frames of any size.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import math
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import grain
import jax
import numpy as np

from hinet_jax.data import image_ops

Batch = Dict[str, Any]
Source = Any  # Random-access: __len__, and __getitem__ -> {'lq', 'gt', 'name'} or None.
PadTo = Optional[Union[int, Tuple[int, int]]]

AUGMENT_MODES = ('dihedral', 'dihedral_half', 'none')


@dataclasses.dataclass(frozen=True)
class CropAugmentToFloat(grain.transforms.RandomMap):
  """Paired random crop, the same dihedral transform on both, then float32 [0, 1].

  Attributes:
    crop_size: int or (h, w).
    augment: one of AUGMENT_MODES (`image_ops.sample_dihedral`).
  """
  crop_size: image_ops.Size
  augment: str = 'dihedral'

  def random_map(self, element: Batch, rng: np.random.Generator) -> Batch:
    """{'lq', 'gt'} of one source item, drawn from grain's per-record generator."""
    k = image_ops.sample_dihedral(rng, self.augment)
    ch, cw = image_ops.pair_size(self.crop_size)
    # A quarter turn swaps H and W: odd k cut (cw, ch), so non-square crops batch.
    window = (ch, cw) if k % 2 == 0 else (cw, ch)
    try:
      lq, gt = pad_pair_to_crop(element['lq'], element['gt'], window)
      lq, gt = image_ops.paired_random_crop(lq, gt, window, rng)
    except ValueError as e:
      raise ValueError(f'Training pair {element.get("name")!r}: {e}') from None
    return {'lq': image_ops.to_float32(image_ops.dihedral(lq, k)),
            'gt': image_ops.to_float32(image_ops.dihedral(gt, k))}


def pad_pair_to_crop(lq: np.ndarray, gt: np.ndarray,
                     size: image_ops.Size) -> Tuple[np.ndarray, np.ndarray]:
  """Pads an (H, W, C) pair at the bottom/right to at least `size` (as is when large enough).

  As HINet's `padding` (basicsr/utils/img_util.py) before the random crop: cv2.BORDER_REFLECT
  repeats the edge pixel, which is numpy's 'symmetric' mode.

  Raises:
    ValueError: lq and gt differ in height or width.
  """
  h, w = lq.shape[:2]
  if gt.shape[:2] != (h, w):
    raise ValueError(f'lq is {h}x{w} but gt is {gt.shape[0]}x{gt.shape[1]}: the pair is '
                     'misaligned; fix or remove it')
  ch, cw = image_ops.pair_size(size)
  pad_h, pad_w = max(0, ch - h), max(0, cw - w)
  if not pad_h and not pad_w:
    return lq, gt
  widths = ((0, pad_h), (0, pad_w), (0, 0))
  return np.pad(lq, widths, mode='symmetric'), np.pad(gt, widths, mode='symmetric')


def stream_seed(seed: int, process_index: int = 0, stream: int = 0) -> int:
  """The seed in [0, 2**32) of one process's shuffle and crops; all arguments >= 0.

  Process 0 on stream 0 keeps `seed`, so one process draws the batches it always did; any other
  (process, stream) gets a hash of all three (as BasicSR seeds each rank with `manual_seed + rank`,
  HINet basicsr/train.py `parse_options`).
  """
  if seed < 0 or process_index < 0 or stream < 0:
    raise ValueError(f'seed ({seed}), process_index ({process_index}) and stream ({stream}) '
                     'must be >= 0')
  if process_index == 0 and stream == 0:
    return int(seed)
  return int(np.random.SeedSequence([seed, process_index, stream]).generate_state(1)[0])


def _process_info(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
  """Defaults to the real JAX process index/count; tests pass their own."""
  pi = jax.process_index() if process_index is None else int(process_index)
  pc = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= pi < pc:
    raise ValueError(f'process_index {pi} is not in [0, {pc})')
  return pi, pc


def local_batch_size(batch_size: int, process_count: int) -> int:
  """The per-process batch: the global batch over the process count, which must divide it."""
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f'The global batch_size {batch_size} must be a positive multiple of the '
                     f'number of JAX processes ({process_count}): change batch_size.')
  return batch_size // process_count


def shard_dataset(ds: grain.MapDataset, process_index: int, process_count: int) -> grain.MapDataset:
  """This process's slice of `ds`: items i with i % count == index; together they cover ds once."""
  if process_count == 1:
    return ds
  if len(ds) < process_count:
    raise ValueError(f'The dataset has {len(ds)} items, fewer than the {process_count} JAX '
                     'processes that each need a shard')
  return ds[process_index::process_count]


def _check_sharding(data_sharding: jax.sharding.Sharding, shape: Tuple[int, ...]) -> None:
  """Fails early, naming the sizes, if the global batch cannot be sharded."""
  try:
    data_sharding.shard_shape(shape)
  except ValueError as e:
    raise ValueError(f'The global batch of shape {shape} cannot be split by the data '
                     f'sharding {data_sharding}: make batch_size a multiple of the number of '
                     f'devices on the batch axis ({e})') from None


def _to_global_arrays(data_sharding: jax.sharding.Sharding, batch: Batch) -> Batch:
  """Each process's local batch as one global jax.Array per key (grain's device_put: 1 process)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(data_sharding, x), batch)


def create_train_iter(source: Source, *, batch_size: int, crop_size: image_ops.Size,
                      augment: str = 'dihedral', seed: int = 0, num_workers: int = 0,
                      num_threads: int = 2, prefetch: int = 8,
                      data_sharding: Optional[jax.sharding.Sharding] = None,
                      shard_by_process: bool = True, process_index: Optional[int] = None,
                      process_count: Optional[int] = None, worker_buffer_size: int = 2,
                      device_prefetch: int = 2, stream: int = 0) -> grain.DatasetIterator:
  """The infinite, resumable training iterator of `{'lq', 'gt'}` float32 NHWC [0, 1] batches.

  Batches are jax.Arrays of the global shape laid out by `data_sharding`, or this process's numpy
  batch without one. With num_workers > 0, absl flags must be parsed, the main module needs an
  `if __name__ == '__main__'` guard (workers are spawned), and the iterator wants `.close()`.

  Args:
    source: random-access source of {'lq', 'gt', 'name'}; one with a
      `train_transform(crop_size, augment)` (clean photos) gives the RandomMap that cuts its pairs.
    batch_size: the global batch (over all processes).
    crop_size: int or (h, w); smaller pairs are padded first (`pad_pair_to_crop`).
    augment: one of AUGMENT_MODES (`image_ops.sample_dihedral`).
    seed: the data seed, mixed with the process index and `stream` (`stream_seed`).
    num_workers: grain worker processes (0: the main process).
    num_threads: reader threads (per worker); 1-2 suit GIL-bound decoding.
    prefetch: read-ahead items per reader.
    data_sharding: the batch's sharding (e.g. P('data')), or None.
    shard_by_process: each JAX process reads a disjoint slice (False: all of it, own order).
    process_index, process_count: override jax.process_index(), jax.process_count() (tests).
    worker_buffer_size, device_prefetch: batches buffered per worker, placed on devices ahead.
    stream: 0 gives the streams a saved iterator state resumes. When that state cannot be used
      (the process count changed), a new value all processes agree on (e.g. the restored step)
      continues on fresh deterministic streams instead of replaying the first batches.
  """
  if augment not in AUGMENT_MODES:
    raise ValueError(f'augment must be one of {AUGMENT_MODES}, got {augment!r}')
  pi, pc = _process_info(process_index, process_count)
  local_bs = local_batch_size(batch_size, pc)
  ch, cw = image_ops.pair_size(crop_size)
  if data_sharding is not None:
    _check_sharding(data_sharding, (batch_size, ch, cw, 3))
  ds = grain.MapDataset.source(source)
  if shard_by_process:
    ds = shard_dataset(ds, pi, pc)
  # A source of clean photos makes its pairs here (`synthetic`): degraded crop by crop, seeded.
  make_crop = getattr(source, 'train_transform', None)
  crop = make_crop((ch, cw), augment) if make_crop else CropAugmentToFloat((ch, cw), augment)
  # Shuffle before repeat reshuffles each epoch; random_map after it draws new crops each epoch.
  ds = ds.seed(stream_seed(seed, pi, stream)).shuffle().repeat().random_map(crop)
  # Batch on the IterDataset so items a source skipped (None) are dropped first.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                               prefetch_buffer_size=prefetch))
  it_ds = it_ds.batch(local_bs, drop_remainder=True)
  if num_workers > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer_size))
  if data_sharding is not None:
    # Placed on the devices in the prefetch thread, so the loop's next() takes a ready batch
    # (bench/README.md, input pipeline).
    it_ds = it_ds.map(functools.partial(_to_global_arrays, data_sharding))
    it_ds = grain.experimental.ThreadPrefetchIterDataset(
        it_ds, prefetch_buffer_size=device_prefetch)
  return iter(it_ds)


def _read_ahead(source: Source, indices: Iterable[int], num_threads: int) -> Iterator[Any]:
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


def iterate_pairs(source: Source, *, num_threads: int = 2) -> Iterator[Batch]:
  """Every pair of `source` as {'lq', 'gt': float32 HWC [0, 1], 'name'}; skipped items left out."""
  for item in _read_ahead(source, range(len(source)), num_threads):
    if item is None:
      continue
    yield {'lq': image_ops.to_float32(item['lq']), 'gt': image_ops.to_float32(item['gt']),
           'name': item['name']}


def _pad_item(x: np.ndarray, pad_to: PadTo) -> np.ndarray:
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


def create_eval_batches(source: Source, *, batch_size: int, pad_to: PadTo = None,
                        shard_by_process: bool = False, process_index: Optional[int] = None,
                        process_count: Optional[int] = None,
                        num_threads: int = 2) -> Iterator[Batch]:
  """Fixed-shape batches of a source of equal-sized images, with a validity mask.

  The last batch is padded with zero images, mask 0 and name ''. `pad_to` (an int multiple or an
  exact (H, W)) reflect-pads every image at the bottom/right; 'hw' keeps the sizes to crop back.
  With shard_by_process, each JAX process evaluates a disjoint slice in as many batches.

  Yields:
    {'lq', 'gt': float32 (B, H, W, 3), 'mask': float32 (B,), 'name': B str, 'hw': int32 (B, 2)}.

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


def _stack_eval_rows(rows: Sequence[Tuple[np.ndarray, np.ndarray, str, Tuple[int, int]]],
                     batch_size: int, shape: Tuple[int, ...]) -> Batch:
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
