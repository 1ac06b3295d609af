"""Restoring images of any size: a jitted fixed-shape predict, tiling, merging, self-ensemble.

The tiling is HINet's validation grid (`grids()` / `grids_inverse()`,
megvii-model/HINet basicsr/models/image_restoration_model.py:123) as pure functions:

  * `tile_coords(h, w, tile, overlap)` cuts square tiles with an adaptive step; with `overlap=0`
    it is exactly the official scheme (`grid_coords`), which the GoPro, REDS and Rain13k numbers
    were measured with (crop 256, tiles averaged where they overlap).
  * `merge_tiles` averages the tiles back (`blend='average'`, the official rule) or weights them
    with a smooth window (`blend='smooth'`); `margin` drops tile pixels near edges that face another
    tile, so a model whose receptive field fits in the margin gives exactly its whole-image output.
  * `restore_image` runs every tile through one compiled program (fixed tile shape, fixed batch,
    the last batch padded), optionally under the x8 dihedral self-ensemble.

Unlike upstream, nothing mutates state between calls; every function is usable on its own.
"""

import collections
import functools
import math
import os
import threading
import weakref
from typing import Callable, List, Optional, Sequence, Tuple, Union

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

BLENDS = ('average', 'smooth')
NUM_DIHEDRAL = 8
# `jax.default_matmul_precision` values a predict function is traced under; 'default' leaves the
# accelerator's own (bf16 passes on TPU, TF32 on GPU), 'highest' computes convolutions in float32.
PRECISIONS = ('highest', 'high', 'default')


class _PreparedVariables:
  """The variables the backend prepared for the last parameter set seen
  (`Backend.prepare_inference`; the CPU backend packs its kernels there).

  Keyed by the identity of the parameter arrays, held by weak references: `jax.Array`s are
  immutable, so the same objects hold the same weights. The prepared variables are freed as soon
  as those arrays are (e.g. a training step donated them). Parameters with other (mutable) leaves,
  e.g. numpy arrays, or traced ones are prepared again on every call.
  """

  def __init__(self, backend: backends.Backend, model):
    self._prepare = functools.partial(backend.prepare_inference, model)
    self._lock = threading.Lock()
    self._refs, self._variables = [], None
    self.prepares = 0  # How many times a parameter set was prepared.

  @property
  def holds_variables(self) -> bool:
    """Whether prepared variables of a live parameter set are held."""
    return self._variables is not None

  def _forget(self, refs):
    with self._lock:
      if self._refs is refs:
        self._refs, self._variables = [], None

  def get(self, params) -> dict:
    """`{'params': params, **prepared}` for these parameters (prepared once per set)."""
    leaves = jax.tree.leaves(params)
    cacheable = bool(leaves) and all(
        isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) for a in leaves)
    with self._lock:
      if cacheable and len(leaves) == len(self._refs) and all(
          r() is a for r, a in zip(self._refs, leaves)):
        return {'params': params, **self._variables}
    extra = self._prepare(params)
    with self._lock:
      self.prepares += 1
      if cacheable:  # Only the extra variables are held: the parameters stay the caller's.
        refs = [weakref.ref(a) for a in leaves]
        self._refs, self._variables = refs, extra
        weakref.finalize(leaves[0], self._forget, refs)
    return {'params': params, **extra}


def _restored(out):
  """The restored image of a model's output: the last stage's, or the output itself."""
  return out[-1] if isinstance(out, (tuple, list)) else out


def _with_precision(fn: Callable, precision: str) -> Callable:
  """`fn` traced under `jax.default_matmul_precision(precision)` ('default': as it is)."""
  if precision == 'default':
    return fn

  @functools.wraps(fn)
  def wrapped(*args):
    with jax.default_matmul_precision(precision):
      return fn(*args)

  return wrapped


def make_predict_fn(model, backend: Union[str, backends.Backend] = 'auto', *,
                    precision: str = 'highest') -> PredictFn:
  """`predict(params, x) -> restored x` for a HINet-like Flax module, compiled for `backend`.

  Args:
    model: a linen module whose `apply({'params': p}, x)` returns the restored image or a tuple of
      stage outputs (HINet's `(stage1, stage2)`; the last one is the restored image). A `HINet`
      gets the backend's layers.
    backend: 'auto', 'xla' or 'cpu' (`hinet_jax.backends.resolve`), or a resolved `Backend`.
    precision: matmul/convolution precision the prediction is traced under (`PRECISIONS`).
      'highest' (the default) measures float32 models in float32 on every accelerator; 'default'
      takes the accelerator's faster default (bf16 passes on TPU, TF32 on GPU). No effect on CPU.

  Returns:
    `predict(params, x)`: float32 NHWC in [0, 1] -> float32 NHWC, raw (not clipped). It compiles
    once per input shape, with the backend's inference compiler options, and applies the variables
    the backend prepares for a parameter set, once per set (the last set is kept). Attributes:
    `backend` (the `Backend`, whose `calls_in_flight` the batched loops follow); `prepare(params)`
    (those variables) and `apply_variables(variables, x)` (unjitted), to trace the prediction
    inside another jitted function (`protocols.evaluate_batches`); `prepared_variables`, their
    cache (None where the backend prepares nothing); `precision`; `__wrapped__`, the same
    function unjitted and without prepared variables.

  Raises:
    errors.InvalidInputError: an unknown `precision`.
  """
  if precision not in PRECISIONS:
    raise errors.InvalidInputError(f'Unknown precision {precision!r}: choose one of '
                                   f'{", ".join(PRECISIONS)}.')
  if isinstance(backend, str):
    backend = backends.resolve(backend, model if isinstance(model, models.HINet) else None)
  if isinstance(model, models.HINet):
    model = backend.build(model)

  @functools.partial(_with_precision, precision=precision)
  def traceable_predict(params, x):
    return _restored(model.apply({'params': params}, x))

  @functools.partial(_with_precision, precision=precision)
  def apply_variables(variables, x):
    return _restored(model.apply(variables, x))

  forward = jax.jit(apply_variables, compiler_options=backend.inference_compiler_options)
  cache = None if backend.prepare_inference is None else _PreparedVariables(backend, model)
  prepare = (lambda params: {'params': params}) if cache is None else cache.get

  @functools.wraps(traceable_predict)
  def predict(params, x):
    return forward(prepare(params), x)

  predict.backend = backend
  predict.prepare = prepare
  predict.apply_variables = apply_variables
  predict.prepared_variables = cache
  predict.precision = precision
  return predict


def calls_in_flight(predict_fn: Callable) -> int:
  """How many calls of `predict_fn` loops keep dispatched before fetching the oldest.

  Args:
    predict_fn: from `make_predict_fn` (its backend decides), or any other function (run as XLA's
      own on this platform).

  Returns:
    The backend's `calls_in_flight`.
  """
  backend = getattr(predict_fn, 'backend', None) or backends.resolve('xla')
  return backend.calls_in_flight


def _axis_starts(size: int, tile: int, overlap: int) -> List[int]:
  """Tile starts along one axis: HINet's adaptive-step loop, generalised to a minimum overlap."""
  if size < tile:
    raise ValueError(f'Image side {size} is smaller than the tile {tile}; pad it first.')
  if not 0 <= overlap < tile:
    raise ValueError(f'overlap must be in [0, tile), got overlap={overlap}, tile={tile}.')
  # Upstream: num = (size - 1) // crop + 1 and step = ceil((size - crop) / (num - 1) - 1e-8).
  # With a minimum overlap o the count becomes ceil((size - o) / (tile - o)); for o = 0 both agree.
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
  """Top-left corners of square tiles covering an h x w image, rows first.

  Args:
    h: image height (>= tile).
    w: image width (>= tile).
    tile: tile side.
    overlap: minimum overlap between neighbouring tiles; the step is spread evenly so that the last
      tile ends at the border. 0 gives HINet's official grid.

  Returns:
    List of (top, left) in upstream's order (row by row, left to right).
  """
  rows = _axis_starts(h, tile, overlap)
  cols = _axis_starts(w, tile, overlap)
  return [(i, j) for i in rows for j in cols]


def grid_coords(h: int, w: int, crop_size: int) -> List[Coord]:
  """HINet's official validation grid (`grids()` with trans_num 1): `tile_coords(..., 0)`.

  Args:
    h: image height (>= crop_size).
    w: image width (>= crop_size).
    crop_size: tile side (256 in the published test configs).

  Returns:
    List of (top, left) corners.
  """
  return tile_coords(h, w, crop_size, overlap=0)


def blend_window(height: int, width: int, blend: str) -> np.ndarray:
  """Per-pixel weight of one tile: ones ('average') or a separable sine window ('smooth').

  The sine window sin(pi (k + 0.5) / n) is strictly positive, so a pixel covered by one tile only
  keeps that tile's value, and tile centres dominate tile edges where tiles overlap.

  Args:
    height: tile height.
    width: tile width.
    blend: 'average' or 'smooth'.

  Returns:
    float32 (height, width).
  """
  if blend == 'average':
    return np.ones((height, width), np.float32)
  if blend == 'smooth':
    wy = np.sin(np.pi * (np.arange(height) + 0.5) / height)
    wx = np.sin(np.pi * (np.arange(width) + 0.5) / width)
    return np.outer(wy, wx).astype(np.float32)
  raise ValueError(f'Unknown blend {blend!r}; choose one of {BLENDS}.')


def merge_tiles(tiles: np.ndarray, coords: Sequence[Coord], hw: Tuple[int, int], *,
                blend: str = 'average', margin: int = 0) -> np.ndarray:
  """Pastes restored tiles back into an image, blending where they overlap.

  Args:
    tiles: (T, th, tw, C) tile outputs, in the order of `coords`.
    coords: (top, left) of each tile.
    hw: (H, W) of the image the tiles were cut from.
    blend: 'average' (every covering tile counts equally, HINet's `grids_inverse`) or 'smooth'.
    margin: pixels at tile edges that face another tile (not the image border) get weight 0. Needs
      `margin <= overlap // 2` so that every pixel stays covered.

  Returns:
    float32 (H, W, C).

  Raises:
    ValueError: if some pixel gets no weight (tiles don't cover the image, margin too large).
  """
  tiles = np.asarray(tiles, np.float32)
  if len(tiles) != len(coords):
    raise ValueError(f'{len(tiles)} tiles but {len(coords)} coordinates.')
  h, w = hw
  _, th, tw, c = tiles.shape
  base = blend_window(th, tw, blend)
  acc = np.zeros((h, w, c), np.float32)
  weight = np.zeros((h, w), np.float32)
  # The official grid ('average', no margin) adds tiles as they are and counts them: no weighted
  # copies (on a GPU the merge is host time that the tiled path waits for).
  plain = blend == 'average' and not margin
  for t, (i, j) in zip(tiles, coords):
    if plain:
      acc[i:i + th, j:j + tw] += t
      weight[i:i + th, j:j + tw] += 1.0
      continue
    wgt = base.copy()
    if margin:
      if i > 0:
        wgt[:margin] = 0
      if i + th < h:
        wgt[th - margin:] = 0
      if j > 0:
        wgt[:, :margin] = 0
      if j + tw < w:
        wgt[:, tw - margin:] = 0
    acc[i:i + th, j:j + tw] += t * wgt[..., None]
    weight[i:i + th, j:j + tw] += wgt
  if np.any(weight <= 0):
    raise ValueError(f'The tiles leave pixels of the {h}x{w} image without weight; use a margin '
                     f'of at most half the tile overlap (margin={margin}).')
  acc /= weight[..., None]
  return acc


def extract_tiles(image: np.ndarray, coords: Sequence[Coord], tile: int) -> np.ndarray:
  """Cuts (T, tile, tile, C) tiles at `coords` out of an HWC image."""
  return np.stack([image[i:i + tile, j:j + tile] for i, j in coords])


def pad_to_at_least(image: np.ndarray, size: int) -> np.ndarray:
  """Reflect-pads the bottom/right of an HWC image so both sides are at least `size`.

  Args:
    image: HWC array.
    size: minimum height and width.

  Returns:
    The padded image (the input itself if it is large enough). Crop `[:h, :w]` to undo.
  """
  h, w = image.shape[:2]
  ph, pw = max(0, size - h), max(0, size - w)
  if ph == 0 and pw == 0:
    return image
  # numpy's reflect repeats the reflection for pads larger than the image; one pixel has nothing
  # to reflect, so it is repeated.
  mode = 'reflect' if min(h, w) > 1 else 'edge'
  return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def predict_batched(predict_fn: PredictFn, params, images: np.ndarray, batch_size: int,
                    in_flight: Optional[int] = None) -> np.ndarray:
  """Runs `predict_fn` over equally-shaped images in fixed-size batches (one compile).

  Args:
    predict_fn: `predict(params, x)` on NHWC float32.
    params: model parameters.
    images: (T, H, W, C) float32.
    batch_size: images per call; the last batch is padded by repeating the last image.
    in_flight: calls dispatched before the oldest one is fetched; None: the backend's
      (`calls_in_flight(predict_fn)`).

  Returns:
    (T, H', W', C') float32 outputs.
  """
  n = len(images)
  batch_size = max(1, batch_size)
  in_flight = max(1, in_flight or calls_in_flight(predict_fn))
  pad = (-n) % batch_size
  if pad:
    images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
  pending, outs = collections.deque(), []
  for s in range(0, len(images), batch_size):
    batch = np.ascontiguousarray(images[s:s + batch_size])
    while len(pending) >= in_flight:
      outs.append(np.asarray(pending.popleft(), np.float32))
    pending.append(predict_fn(params, batch))
  outs.extend(np.asarray(o, np.float32) for o in pending)
  return np.concatenate(outs)[:n]


def _predict_ensemble(predict_fn, params, images, batch_size, self_ensemble):
  """`predict_batched`, averaged over the 8 dihedral transforms when `self_ensemble`."""
  if not self_ensemble:
    return predict_batched(predict_fn, params, images, batch_size)
  total = None
  for k in range(NUM_DIHEDRAL):
    out = predict_batched(predict_fn, params, np.ascontiguousarray(image_ops.dihedral(images, k)),
                          batch_size)
    out = image_ops.inverse_dihedral(out, k)
    total = out if total is None else total + out
  return total / NUM_DIHEDRAL


def restore_image(predict_fn: PredictFn, params, image: np.ndarray, *, tile: Optional[int] = None,
                  overlap: int = 0, margin: Optional[int] = None, batch_size: int = 4,
                  blend: str = 'average', self_ensemble: bool = False) -> np.ndarray:
  """Restores one HWC float image of any size, whole or tile by tile.

  Args:
    predict_fn: jitted `predict(params, x)` (see `make_predict_fn`).
    params: model parameters.
    image: float32 HWC in [0, 1], any height and width.
    tile: None runs the whole image at once (one compile per image size); an int cuts square
      tiles of that side (one compile for all tiles and images). Images smaller than a tile are
      reflect-padded up to it and cropped back.
    overlap: minimum tile overlap; 0 is HINet's official grid (adaptive step).
    margin: tile pixels dropped at edges facing another tile; None means `overlap // 2`.
    batch_size: tiles per call (the last batch is padded, so the shape never changes).
    blend: 'average' (official) or 'smooth'.
    self_ensemble: average over the 8 flips/rotations (x8 the compute).

  Returns:
    float32 HWC restored image, raw model output (not clipped; clip when saving).
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 3:
    raise ValueError(f'restore_image takes one HWC image, got shape {image.shape}.')
  h, w = image.shape[:2]
  if tile is None:
    return _predict_ensemble(predict_fn, params, image[None], 1, self_ensemble)[0]
  margin = overlap // 2 if margin is None else margin
  padded = pad_to_at_least(image, tile)
  coords = tile_coords(padded.shape[0], padded.shape[1], tile, overlap)
  logging.log_first_n(logging.INFO, 'Restoring a %dx%d image as %d tiles of %d (overlap %d).', 5,
                      h, w, len(coords), tile, overlap)
  outs = _predict_ensemble(predict_fn, params, extract_tiles(padded, coords, tile), batch_size,
                           self_ensemble)
  merged = merge_tiles(outs, coords, padded.shape[:2], blend=blend, margin=margin)
  return merged[:h, :w]


# ----------------------------------------------------------------------------
# Restoring image files (no targets).

PANEL_GAP = 8  # Pixels of white between the input and the restored image in a panel.


def list_input_images(path: str) -> Tuple[List[str], List[str]]:
  """The image files to restore: `path` itself, or the files directly inside the folder `path`.

  Args:
    path: an image file or a folder.

  Returns:
    (images, skipped): sorted image paths, and the other files (not images by extension).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: two images in the folder share a stem (their outputs would collide).
  """
  if os.path.isfile(path):
    files = [path]
  elif os.path.isdir(path):
    files = sorted(os.path.join(path, f) for f in os.listdir(path)
                   if os.path.isfile(os.path.join(path, f)))
  else:
    raise errors.MissingPathError(f'--input {path} does not exist.')
  images = [f for f in files if image_ops.is_image_file(f)]
  skipped = [f for f in files if not image_ops.is_image_file(f)]
  stems = {}
  for f in images:
    stem = os.path.splitext(os.path.basename(f))[0]
    if stem in stems:
      raise errors.InvalidInputError(
          f'{stems[stem]} and {f} would both be written as {stem}.png; rename one.')
    stems[stem] = f
  return images, skipped


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = PANEL_GAP) -> np.ndarray:
  """A before/after panel: `left | gap | right`, same dtype (white gap).

  Args:
    left: HWC image.
    right: HWC image of the same shape and dtype.
    gap: gap width in pixels.

  Returns:
    (H, 2W + gap, C) image.
  """
  white = np.iinfo(left.dtype).max if np.issubdtype(left.dtype, np.integer) else 1.0
  spacer = np.full((left.shape[0], gap, left.shape[2]), white, left.dtype)
  return np.concatenate([left, spacer, right], axis=1)


def restore_files(predict_fn: PredictFn, params, inputs: Sequence[str], output_dir: str, *,
                  overwrite: bool = False, panels: bool = False, progress: bool = True,
                  **restore_kwargs) -> dict:
  """Restores image files into `output_dir` as PNGs of the input's bit depth.

  Args:
    predict_fn: jitted `predict(params, x)`.
    params: model parameters.
    inputs: image paths (see `list_input_images`).
    output_dir: destination; `<stem>.png` per input (and `<stem>_panel.png` with `panels`).
    overwrite: replace existing outputs (otherwise they are skipped, with a log line).
    panels: also write a before/after side-by-side panel.
    progress: show a tqdm progress bar.
    **restore_kwargs: `restore_image` options (tile, overlap, margin, batch_size, blend,
      self_ensemble).

  Returns:
    {'written': [...], 'existing': [...]} output paths.

  Raises:
    image_ops.ImageReadError: an input cannot be decoded (the message names the file).
  """
  import tqdm  # pylint: disable=g-import-not-at-top

  os.makedirs(output_dir, exist_ok=True)
  result = {'written': [], 'existing': []}
  for path in tqdm.tqdm(inputs, unit='image', disable=not progress):
    stem = os.path.splitext(os.path.basename(path))[0]
    out_path = os.path.join(output_dir, stem + '.png')
    if os.path.exists(out_path) and not overwrite:
      logging.info('%s exists; skipping %s (pass --overwrite to replace it).', out_path, path)
      result['existing'].append(out_path)
      continue
    raw = image_ops.read_image(path)
    bit_depth = 16 if raw.dtype == np.uint16 else 8
    restored = restore_image(predict_fn, params, image_ops.to_float32(raw), **restore_kwargs)
    image_ops.write_image(out_path, restored, bit_depth=bit_depth)
    if panels:
      out_q = np.round(np.clip(restored, 0, 1) * np.iinfo(raw.dtype).max).astype(raw.dtype)
      image_ops.write_image(os.path.join(output_dir, stem + '_panel.png'),
                            side_by_side(raw, out_q))
    result['written'].append(out_path)
  return result
