"""Local statistics at inference (TLC, Chu et al., ECCV 2022) for HINet's half instance norm.

Trained on crops, HINet normalises with statistics over the crop; on a full frame the same norm
averages over the whole frame. TLC instead takes each position's mean and variance over a window
of about the training size (`base_size`: 1.5x the training crop) around it, at each level scaled
to that level's feature size. A position closer to an edge than half a window takes the nearest
full window's statistics; a window at least the feature map is the global norm. Training is
unchanged: this only swaps the norm part of a trained model (`with_local_stats`).
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from hinet_jax.models.hinet import HINet
from hinet_jax.models.layers import HalfInstanceNorm, INSTANCE_NORM_EPS

Array = jax.Array

# TLC's base_size over the training crop (384 for HINet's 256 crops, megvii-research/TLC).
WINDOW_PER_CROP = 1.5
# Every published preset trained on 256 crops; a checkpoint does not store its crop.
DEFAULT_WINDOW = 384


def window_of_flag(value: Optional[int]) -> Optional[int]:
  """The programs' `--local_stats` value as a window: None is off, 0 is DEFAULT_WINDOW."""
  return None if value is None else value or DEFAULT_WINDOW


def default_window(train_crop: int) -> int:
  """TLC's window at full resolution for a model trained on `train_crop` crops."""
  return int(round(WINDOW_PER_CROP * train_crop))


def _box_mean_1d(x: Array, window: int, axis: int) -> Array:
  """Mean over `window` consecutive entries along `axis` from one cumulative sum (O(n)): the
  window centred on each entry, or the nearest one inside; the whole axis if shorter.

  Bounds are arrays, not Python branches, so the size may be symbolic (`jax.export`)."""
  pos = jnp.arange(x.shape[axis])
  n = pos[-1] + 1
  start = jnp.clip(pos - (window - 1) // 2, 0, jnp.maximum(n - window, 0))
  end = jnp.minimum(start + window, n)
  zero = jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))
  sums = jnp.concatenate([zero, jnp.cumsum(x, axis=axis)], axis=axis)
  shape = [1] * x.ndim
  shape[axis] = -1
  total = jnp.take(sums, end, axis=axis) - jnp.take(sums, start, axis=axis)
  return total / (end - start).astype(x.dtype).reshape(shape)


def box_mean(x: Array, window: int) -> Array:
  """Mean of NHWC `x` over a `window` x `window` box at each position, edges as TLC's.

  The integral image taken one axis at a time: each cumulative sum runs along one side of
  window means, so float32 rounding grows with the side, not the area, on large frames.
  """
  return _box_mean_1d(_box_mean_1d(x, window, axis=1), window, axis=2)


def local_instance_norm(x: Array, scale: Array, bias: Array, window: int,
                        epsilon: float = INSTANCE_NORM_EPS) -> Array:
  """`layers.instance_norm` of NHWC `x` with each position's statistics over a `window` box."""
  x32 = x.astype(jnp.float32)
  # Centred on the global mean first: the variance below is E[x^2] - E[x]^2.
  x32 = x32 - jnp.mean(x32, axis=(1, 2), keepdims=True)
  mean = box_mean(x32, window)
  var = jnp.maximum(box_mean(jnp.square(x32), window) - jnp.square(mean), 0.0)
  y = (x32 - mean) * jax.lax.rsqrt(var + epsilon) * scale.astype(jnp.float32)
  return (y + bias.astype(jnp.float32)).astype(x.dtype)


class LocalHalfInstanceNorm(HalfInstanceNorm):
  """`HalfInstanceNorm` (same parameters) with statistics over a window around each position.

  Attributes:
    window: the window at full resolution, in pixels.
    wf: the model's base width; a level with c channels has been downsampled c / wf times, so
      its window is `window * wf / c` feature pixels (at least 1).
  """

  window: int = DEFAULT_WINDOW
  wf: int = 64

  def level_window(self, channels: int) -> int:
    """The window at a level of `channels` channels (the block's, twice the normalised half)."""
    return max(1, int(self.window * self.wf // channels))

  def normalize(self, first: Array, scale: Array, bias: Array) -> Array:
    window = self.level_window(2 * first.shape[-1])
    return local_instance_norm(first, scale, bias, window, self.epsilon)


@dataclasses.dataclass(frozen=True)
class LocalStats:
  """A `Layers.norm` part building `LocalHalfInstanceNorm(window, wf)`; compared by value, so
  two models with the same window share their compiled programs."""

  window: int
  wf: int

  def __call__(self, **kwargs) -> LocalHalfInstanceNorm:
    return LocalHalfInstanceNorm(window=self.window, wf=self.wf, **kwargs)


def with_local_stats(model: HINet, window: int) -> HINet:
  """`model` (any backend's layers) normalising with local statistics over `window` pixels at
  full resolution; same parameters. Raises ValueError for a window under 1, or a model whose
  norm is not a half instance norm (a researcher's own norm is left to its author)."""
  if window < 1:
    raise ValueError(f'The local statistics window must be at least 1 pixel, got {window}.')
  norm = model.layers.norm
  if not isinstance(norm, LocalStats) and not (isinstance(norm, type) and
                                               issubclass(norm, HalfInstanceNorm)):
    raise ValueError(f'Local statistics replace the half instance norm; this model has {norm}.')
  return model.clone(layers=dataclasses.replace(model.layers, norm=LocalStats(window, model.wf)))
