"""Pixel losses of the official HINet recipe, stateless and computed in float32.

One loss per network output, summed (`basicsr/models/image_restoration_model.py`
`optimize_parameters`); `PSNRLoss` 0.5 for GoPro/REDS/Rain13k, `L1Loss` 1 for SIDD
(`options/train/*/HINet*.yml`).
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
  """Mean absolute error over every element (BasicSR `L1Loss`, reduction 'mean'), float32."""
  pred, target = jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32)
  return weight * jnp.mean(jnp.abs(pred - target))


def psnr_loss(pred: Array, target: Array, weight: float = 0.5) -> Array:
  """`weight` times minus the per-image PSNR (peak 1), batch mean: HINet `PSNRLoss`, toY=False."""
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
    raise ValueError(f'Unknown loss {name!r} (config.loss.name): pass --config.loss.name= one '
                     f'of {sorted(LOSSES)}.')
  return LOSSES[name]


def multi_stage_loss(outputs: Sequence[Array], target: Array, *, name: str = 'psnr',
                     weight: float = 0.5) -> Tuple[Array, Tuple[Array, ...]]:
  """`(total, per_stage)`: loss `name` at `weight` of every output (HINet's stages) vs `target`."""
  fn = get_loss_fn(name)
  per_stage = tuple(fn(out, target, weight) for out in outputs)
  return sum(per_stage[1:], per_stage[0]), per_stage
