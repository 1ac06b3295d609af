"""Restoring images of any size: a model's jitted forward, tiling, merging, self-ensemble.

The tiling is HINet's validation grid (`grids()` / `grids_inverse()`, megvii-model/HINet
basicsr/models/image_restoration_model.py:123) as pure functions: `tile_coords` (overlap 0 is the
official grid), `merge_tiles` and `restore_image`, which runs every tile through one compiled
program. Nothing mutates state between calls.
"""

import collections
import functools
import math
import threading
import weakref
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from absl import logging
import jax
import numpy as np

from hinet_jax import backends
from hinet_jax import errors
from hinet_jax import models
from hinet_jax.data import image_ops

Array = jax.Array
PredictFn = Callable[[object, Array], Array]
Coord = Tuple[int, int]
ProgressFn = Callable[[int, int], None]  # (done, total)

BLENDS = ('average', 'smooth')
NUM_DIHEDRAL = 8
# `jax.default_matmul_precision` of the forward: 'highest' is float32 on every accelerator,
# 'default' the accelerator's own (bf16 passes on TPU, TF32 on GPU).
PRECISIONS = ('highest', 'high', 'default')


class _PreparedVariables:
  """The backend's prepared variables for the last parameter set seen, keyed by the identity of
  its (immutable) `jax.Array`s and freed with them; other parameters are prepared on every call."""

  def __init__(self, backend: backends.Backend, model):
    self._prepare = functools.partial(backend.inference_variables, model)
    self._lock = threading.Lock()
    self._refs, self._variables = [], None
    self.prepares = 0

  @property
  def holds_variables(self) -> bool:
    return self._variables is not None

  def _forget(self, refs):
    with self._lock:
      if self._refs is refs:
        self._refs, self._variables = [], None

  def get(self, params) -> dict:
    """`{'params': params, **prepared}`, prepared once per parameter set."""
    leaves = jax.tree.leaves(params)
    cacheable = bool(leaves) and all(
        isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) for a in leaves)
    with self._lock:
      if cacheable and len(leaves) == len(self._refs) and all(
          r() is a for r, a in zip(self._refs, leaves)):
        return {'params': params, **self._variables}
    variables = self._prepare(params)
    extra = {k: v for k, v in variables.items() if k != 'params'}
    with self._lock:
      self.prepares += 1
      if cacheable:  # The parameters stay the caller's: only the prepared ones are held.
        refs = [weakref.ref(a) for a in leaves]
        self._refs, self._variables = refs, extra
        weakref.finalize(leaves[0], self._forget, refs)
    return variables


def _apply(model, precision: str, variables, x):
  """The restored image of `model` on NHWC `x` (traced under `precision`)."""
  variables = backends.fill_shapes(variables)
  if precision == 'default':
    return models.restored_image(model.apply(variables, x))
  with jax.default_matmul_precision(precision):
    return models.restored_image(model.apply(variables, x))


class Forward:
  """`forward(params, x) -> restored x`: a model's jitted fixed-shape forward on a backend.

  It compiles once per input shape with the backend's inference compiler options, and applies
  the variables the backend prepares, once per parameter set (the last one is kept). Training
  calls it with changing parameters; `Predictor` holds one set.

  Attributes: `model` (a HINet built with the backend's layers), `backend`, `precision`,
  `apply(variables, x)` (traceable in other jitted functions: `engine.eval_step`) and
  `prepared_variables` (the cache; None where the backend prepares nothing).
  """

  def __init__(self, model, backend: Union[str, backends.Backend] = 'auto', *,
               precision: str = 'highest'):
    if precision not in PRECISIONS:
      raise errors.InvalidInputError(f'Unknown precision {precision!r}: choose one of '
                                     f'{", ".join(PRECISIONS)}.')
    hinet = isinstance(model, models.HINet)
    if isinstance(backend, str):
      backend = backends.resolve(backend, model if hinet else None)
    self.model = backend.build(model) if hinet else model
    self.backend, self.precision = backend, precision
    self.apply = functools.partial(_apply, self.model, precision)
    self._jitted = backend.jit_inference(self.apply)
    self.prepared_variables = (None if backend.prepare_inference is None else
                               _PreparedVariables(backend, self.model))

  def variables(self, params) -> dict:
    """The variables `apply` reads for `params`."""
    if self.prepared_variables is None:
      return {'params': params}
    return self.prepared_variables.get(params)

  def __call__(self, params, x: Array) -> Array:
    """Float32 NHWC in [0, 1] -> float32 NHWC restored (raw, not clipped)."""
    return self._jitted(self.variables(params), x)

  def on_variables(self, variables, x: Array) -> Array:
    """`__call__` on variables already prepared (`Backend.inference_variables`)."""
    return self._jitted(variables, x)


class _PlainForward:
  """A `Forward` face for any `predict(params, x)`: run as XLA's own on this platform."""

  def __init__(self, predict_fn: PredictFn):
    self.backend = backends.resolve('xla')
    self.apply = predict_fn
    self.precision = None

  def variables(self, params):
    return params


def as_forward(predict_fn: Union[Forward, PredictFn]):
  """`predict_fn` as a `Forward` (itself, or a plain function behind the same face)."""
  return predict_fn if isinstance(predict_fn, Forward) else _PlainForward(predict_fn)


def calls_in_flight(predict_fn: Callable) -> int:
  """How many calls of `predict_fn` loops keep dispatched: its backend's (`Forward`) or XLA's."""
  return as_forward(predict_fn).backend.calls_in_flight


def _axis_starts(size: int, tile: int, overlap: int) -> List[int]:
  """Tile starts along one axis: HINet's adaptive-step loop, generalised to a minimum overlap."""
  if size < tile:
    raise ValueError(f'Image side {size} is smaller than the tile {tile}; pad it first.')
  if not 0 <= overlap < tile:
    raise ValueError(f'overlap must be in [0, tile), got overlap={overlap}, tile={tile}.')
  # Upstream's count (size - 1) // crop + 1, with a minimum overlap o: ceil((size-o) / (tile-o)).
  num = max(1, -(-(size - overlap) // (tile - overlap)))
  step = tile if num == 1 else math.ceil((size - tile) / (num - 1) - 1e-8)
  starts, i = [], 0
  while i < size:
    if i + tile >= size:  # The last tile is flush with the far edge (upstream's `last_i`).
      starts.append(size - tile)
      break
    starts.append(i)
    i += step
  return starts


def tile_coords(h: int, w: int, tile: int, overlap: int = 0) -> List[Coord]:
  """Top-left corners of square tiles covering an h x w image (h, w >= tile), row by row.

  `overlap` is the minimum overlap of neighbours, the step spread evenly so that the last tile
  ends at the border; 0 is HINet's official grid, in upstream's order.
  """
  rows = _axis_starts(h, tile, overlap)
  cols = _axis_starts(w, tile, overlap)
  return [(i, j) for i in rows for j in cols]


def grid_coords(h: int, w: int, crop_size: int) -> List[Coord]:
  """HINet's official validation grid (`grids()`, trans_num 1; crop 256 in the test configs)."""
  return tile_coords(h, w, crop_size, overlap=0)


def blend_window(height: int, width: int, blend: str) -> np.ndarray:
  """Per-pixel float32 weight of one tile: ones ('average') or a separable sine window ('smooth',
  strictly positive, so a pixel covered once keeps its tile's value)."""
  if blend == 'average':
    return np.ones((height, width), np.float32)
  if blend == 'smooth':
    wy = np.sin(np.pi * (np.arange(height) + 0.5) / height)
    wx = np.sin(np.pi * (np.arange(width) + 0.5) / width)
    return np.outer(wy, wx).astype(np.float32)
  raise ValueError(f'Unknown blend {blend!r}; choose one of {BLENDS}.')


def _tile_weight(base: np.ndarray, i: int, j: int, hw: Tuple[int, int], margin: int):
  """`base` with `margin` pixels zeroed at the tile edges that face another tile."""
  wgt = base.copy()
  th, tw = base.shape
  if i > 0:
    wgt[:margin] = 0
  if i + th < hw[0]:
    wgt[th - margin:] = 0
  if j > 0:
    wgt[:, :margin] = 0
  if j + tw < hw[1]:
    wgt[:, tw - margin:] = 0
  return wgt


class TileMerger:
  """Accumulates tile outputs, arriving row of tiles by row of tiles (`tile_coords` order), into
  one (H, W, C) image. Rows that no later tile reaches are divided by their weights and written
  out (rounded to `bits` as `image_ops.quantize` does, or float32) when the next row of tiles
  starts, so the float sums span one row of tiles, never the image (`merge_tiles` on a stream)."""

  def __init__(self, hw: Tuple[int, int], tile_hw: Tuple[int, int], *, blend: str = 'average',
               margin: int = 0, bits: Optional[int] = None):
    self.hw, self.margin, self.bits = hw, margin, bits
    self.plain = blend == 'average' and not margin  # The official grid: no weighted copies.
    self.base = blend_window(tile_hw[0], tile_hw[1], blend)
    self.top = 0  # The first row not yet written; the band's sums start there.
    self.acc = self.out = None  # Allocated with the first tile (its channels).
    self.weight = np.zeros((tile_hw[0], hw[1]), np.float32)

  def add(self, tile: np.ndarray, i: int, j: int) -> None:
    """Adds one (th, tw, C) tile output whose top-left corner is (i, j)."""
    th, tw = self.base.shape
    if self.acc is None:
      self.acc = np.zeros((th, self.hw[1], tile.shape[-1]), np.float32)
      dtype = {None: np.float32, 8: np.uint8, 16: np.uint16}[self.bits]
      self.out = np.empty(self.hw + tile.shape[-1:], dtype)
    if i < self.top:
      raise ValueError(f'A tile at row {i} came after the rows above {self.top} were written: '
                       'tiles must arrive row by row, as `tile_coords` orders them.')
    self._write_until(i)
    wgt = 1.0 if self.plain else (
        _tile_weight(self.base, i, j, self.hw, self.margin) if self.margin else self.base)
    self.acc[i - self.top:i - self.top + th, j:j + tw] += tile if self.plain else (
        tile * wgt[..., None])
    self.weight[i - self.top:i - self.top + th, j:j + tw] += wgt

  def _write_until(self, row: int) -> None:
    """Writes the finished rows [top, row) out and slides the band down to start at `row`."""
    n = row - self.top
    if n <= 0:
      return
    if n > len(self.weight) or np.any(self.weight[:n] <= 0):
      h, w = self.hw
      raise ValueError(f'The tiles leave pixels of the {h}x{w} image without weight; use a margin '
                       f'of at most half the tile overlap (margin={self.margin}).')
    band = self.acc[:n] / self.weight[:n, :, None]
    self.out[self.top:row] = band if self.bits is None else image_ops.quantize(band, self.bits)
    for band in (self.acc, self.weight):
      band[:len(band) - n] = band[n:]
      band[len(band) - n:] = 0
    self.top = row

  def result(self) -> np.ndarray:
    """The merged image, every row written.

    Raises:
      ValueError: some pixel got no weight.
    """
    if self.acc is None:
      raise ValueError('No tile was added.')
    self._write_until(self.hw[0])
    return self.out


def merge_tiles(tiles: np.ndarray, coords: Sequence[Coord], hw: Tuple[int, int], *,
                blend: str = 'average', margin: int = 0) -> np.ndarray:
  """Pastes (T, th, tw, C) tiles back into a float32 (H, W, C) image, blending overlaps.

  Args:
    tiles: tile outputs, in the order of `coords`.
    coords: (top, left) of each tile.
    hw: (H, W) of the image the tiles were cut from.
    blend: 'average' (HINet's `grids_inverse`) or 'smooth'.
    margin: pixels dropped at tile edges facing another tile (at most `overlap // 2`).

  Returns:
    The merged image.

  Raises:
    ValueError: some pixel gets no weight.
  """
  tiles = np.asarray(tiles, np.float32)
  if len(tiles) != len(coords):
    raise ValueError(f'{len(tiles)} tiles but {len(coords)} coordinates.')
  merger = TileMerger(tuple(hw), tiles.shape[1:3], blend=blend, margin=margin)
  for t, (i, j) in zip(tiles, coords):
    merger.add(t, i, j)
  return merger.result()


def extract_tiles(image: np.ndarray, coords: Sequence[Coord], tile: int) -> np.ndarray:
  """Cuts (T, tile, tile, C) tiles at `coords` out of an HWC image."""
  return np.stack([image[i:i + tile, j:j + tile] for i, j in coords])


def pad_to_at_least(image: np.ndarray, size: int) -> np.ndarray:
  """Reflect-pads the bottom/right of an HWC image to sides >= `size` (crop `[:h, :w]` back)."""
  h, w = image.shape[:2]
  ph, pw = max(0, size - h), max(0, size - w)
  if ph == 0 and pw == 0:
    return image
  mode = 'reflect' if min(h, w) > 1 else 'edge'  # One pixel has nothing to reflect.
  return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _fetched_in_order(predict_fn: PredictFn, params, batches: Iterable[np.ndarray],
                      in_flight: int) -> Iterator[np.ndarray]:
  """`predict_fn(params, b)` of each batch as float32 numpy, in order, with at most `in_flight`
  calls dispatched and not yet fetched when the next is dispatched."""
  pending = collections.deque()
  for batch in batches:
    while len(pending) >= in_flight:
      yield np.asarray(pending.popleft(), np.float32)
    pending.append(predict_fn(params, batch))
  while pending:
    yield np.asarray(pending.popleft(), np.float32)


def _full_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
  """`images` as float32, the last one repeated up to `batch_size` (one compile for all)."""
  pad = batch_size - len(images)
  if pad > 0:
    images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
  return image_ops.to_float32(images)


def predict_batched(predict_fn: PredictFn, params, images: np.ndarray, batch_size: int,
                    in_flight: Optional[int] = None) -> np.ndarray:
  """(T, H, W, C) images through `predict_fn(params, x)` in fixed-size batches.

  Args:
    predict_fn: `predict(params, x)` on NHWC float32 (a `Forward`, or any function).
    params: its parameters.
    images: float32 in [0, 1], or uint8/uint16 (converted batch by batch).
    batch_size: images per call; the last batch repeats the last image (one compile).
    in_flight: calls dispatched before the oldest is fetched; None: `calls_in_flight(predict_fn)`.

  Returns:
    (T, H', W', C') float32 outputs.
  """
  batch_size = max(1, batch_size)
  in_flight = max(1, in_flight or calls_in_flight(predict_fn))
  batches = (np.ascontiguousarray(_full_batch(images[s:s + batch_size], batch_size))
             for s in range(0, len(images), batch_size))
  return np.concatenate(list(_fetched_in_order(predict_fn, params, batches, in_flight)))[
      :len(images)]


def _chunk_outputs(predict_fn, params, get_chunk: Callable[[int], np.ndarray], num_chunks: int,
                   batch_size: int, self_ensemble: bool, in_flight: int) -> Iterator[np.ndarray]:
  """The outputs of `get_chunk(c)` (at most `batch_size` images; padded, so longer) for each
  chunk in order, averaged over the 8 dihedral transforms when `self_ensemble`. Chunks stream:
  only those in flight are held."""
  transforms = range(NUM_DIHEDRAL if self_ensemble else 1)

  def batches():
    for c in range(num_chunks):
      chunk = _full_batch(get_chunk(c), batch_size)
      for k in transforms:
        yield np.ascontiguousarray(image_ops.dihedral(chunk, k))

  fetched = _fetched_in_order(predict_fn, params, batches(), in_flight)
  for _ in range(num_chunks):
    total = None
    for k in transforms:
      out = image_ops.inverse_dihedral(next(fetched), k)
      total = out if total is None else total + out
    yield total / NUM_DIHEDRAL if self_ensemble else total


def restore_image(predict_fn: PredictFn, params, image: np.ndarray, *, tile: Optional[int] = None,
                  overlap: int = 0, margin: Optional[int] = None, batch_size: int = 4,
                  blend: str = 'average', self_ensemble: bool = False,
                  in_flight: Optional[int] = None, progress: Optional[ProgressFn] = None,
                  bits: Optional[int] = None) -> np.ndarray:
  """Restores one HWC image of any size, whole or tile by tile.

  Args:
    predict_fn, params, batch_size (tiles per call), in_flight: as `predict_batched`.
    image: float32 in [0, 1], or uint8/uint16 (converted tile by tile, which saves a float32
      copy of a large photo; the values are the same).
    tile: None: the whole image (one compile per size); a side: square tiles, one compile for all
      (smaller images are reflect-padded up to it). Tiles stream through a `TileMerger`, so the
      memory beyond the image and its output is one row of tiles and one batch of tiles per
      call in flight.
    overlap: minimum tile overlap; 0 is HINet's official grid.
    margin: tile pixels dropped at edges facing another tile; None: `overlap // 2`.
    blend: 'average' (official) or 'smooth'.
    self_ensemble: average over the 8 flips/rotations (x8 the compute).
    progress: called as `progress(done, total)` in tiles (1 for a whole image) after each batch.
    bits: None for the raw output; 8 or 16 for it rounded as `image_ops.quantize` does, row of
      tiles by row of tiles (no float32 copy of the whole output is made).

  Returns:
    float32 HWC, the raw model output (not clipped); or uint8/uint16 with `bits`.
  """
  image = np.asarray(image)
  if not np.issubdtype(image.dtype, np.integer):
    image = image.astype(np.float32, copy=False)
  if image.ndim != 3:
    raise ValueError(f'restore_image takes one HWC image, got shape {image.shape}.')
  if bits not in (None, 8, 16):
    raise ValueError(f'bits must be None, 8 or 16, got {bits}.')
  h, w = image.shape[:2]
  in_flight = max(1, in_flight or calls_in_flight(predict_fn))
  report = progress or (lambda done, total: None)
  if tile is None:
    out = next(_chunk_outputs(predict_fn, params, lambda _: image[None], 1, 1, self_ensemble,
                              in_flight))[0]
    report(1, 1)
    return out if bits is None else image_ops.quantize(out, bits)
  margin = overlap // 2 if margin is None else margin
  padded = pad_to_at_least(image, tile)
  coords = tile_coords(padded.shape[0], padded.shape[1], tile, overlap)
  logging.log_first_n(logging.INFO, 'Restoring a %dx%d image as %d tiles of %d (overlap %d).', 5,
                      h, w, len(coords), tile, overlap)
  batch_size = max(1, batch_size)
  starts = range(0, len(coords), batch_size)
  outs = _chunk_outputs(
      predict_fn, params, lambda c: extract_tiles(padded, coords[starts[c]:][:batch_size], tile),
      len(starts), batch_size, self_ensemble, in_flight)
  merger = TileMerger(padded.shape[:2], (tile, tile), blend=blend, margin=margin, bits=bits)
  for start, out in zip(starts, outs):
    for t, (i, j) in zip(out, coords[start:start + batch_size]):
      merger.add(t, i, j)
    report(min(start + batch_size, len(coords)), len(coords))
  return merger.result()[:h, :w]
