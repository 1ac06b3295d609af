"""Pixel losses of the official HINet recipe, stateless and computed in float32.

The official training sums one pixel loss per network output against the clean image at equal
weight (`basicsr/models/image_restoration_model.py`, `optimize_parameters`: `for pred in preds:
l_pix += self.cri_pix(pred, self.gt)`). GoPro, REDS and Rain13k use `PSNRLoss` with weight 0.5;
SIDD uses `L1Loss` with weight 1 (`options/train/*/HINet*.yml`, `pixel_opt`).
"""

import math
from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

# 10 / ln(10): turns ln(MSE) into decibels (`basicsr/models/losses/losses.py`, PSNRLoss.scale).
PSNR_SCALE = 10.0 / math.log(10.0)
# Added to the per-image MSE before the log (PSNRLoss.forward), so identical images stay finite.
PSNR_EPS = 1e-8


def l1_loss(pred: Array, target: Array, weight: float = 1.0) -> Array:
  """Mean absolute error over every element (BasicSR `L1Loss`, reduction 'mean').

  Args:
    pred: predicted images, NHWC.
    target: clean images, same shape.
    weight: loss weight (`loss_weight`).

  Returns:
    float32 scalar.
  """
  pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
  return weight * jnp.mean(jnp.abs(pred - target))


def psnr_loss(pred: Array, target: Array, weight: float = 0.5) -> Array:
  """Minus the PSNR (dB, peak 1) per image, averaged over the batch, times `weight`.

  `weight * 10/ln(10) * mean_n(ln(mean_hwc((pred - target)^2) + 1e-8))`, i.e. BasicSR/HINet
  `PSNRLoss` with `toY=False`.

  Args:
    pred: predicted images, NHWC in [0, 1].
    target: clean images, same shape.
    weight: loss weight (0.5 in the official deblurring/deraining recipes).

  Returns:
    float32 scalar.
  """
  pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
  mse = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
  return weight * PSNR_SCALE * jnp.mean(jnp.log(mse + PSNR_EPS))


LOSSES: Dict[str, Callable[..., Array]] = {'l1': l1_loss, 'psnr': psnr_loss}


def get_loss_fn(name: str) -> Callable[..., Array]:
  """Looks up a pixel loss by config name ('l1' or 'psnr').

  Args:
    name: the loss name (`config.loss.name`).

  Returns:
    `fn(pred, target, weight) -> scalar`.
  """
  if name not in LOSSES:
    raise ValueError(f'Unknown loss {name!r} (config.loss.name); choose one of {sorted(LOSSES)}.')
  return LOSSES[name]


def multi_stage_loss(outputs: Sequence[Array], target: Array, *, name: str = 'psnr',
                     weight: float = 0.5) -> Tuple[Array, Tuple[Array, ...]]:
  """The pixel loss of every stage's output against `target`, summed at equal weight.

  Args:
    outputs: the network's outputs, e.g. HINet's `(stage1, stage2)`.
    target: clean images, NHWC.
    name: 'l1' or 'psnr'.
    weight: the per-stage loss weight.

  Returns:
    `(total, per_stage)`: the float32 sum and the tuple of per-stage losses.
  """
  fn = get_loss_fn(name)
  per_stage = tuple(fn(out, target, weight) for out in outputs)
  return sum(per_stage[1:], per_stage[0]), per_stage
