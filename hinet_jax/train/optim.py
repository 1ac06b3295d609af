"""The official optimizer recipe as optax: grad clipping -> Adam -> cosine annealing (+ warm-up).

Upstream: `basicsr/models/image_restoration_model.py` `optimize_parameters` (clip at 0.01, Adam)
and `basicsr/models/base_model.py` (`TrueCosineAnnealingLR`, `update_learning_rate` warm-up).
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from hinet_jax import errors


def _cosine_factor(step, decay_steps: int):
  """`(1 + cos(pi step / T)) / 2` as `sin^2(pi (T - step) / 2T)`: accurate in float32 up to T."""
  return jnp.square(jnp.sin((decay_steps - step) * (math.pi / (2 * decay_steps))))


def create_learning_rate_fn(*, learning_rate: float, decay_steps: int, eta_min: float = 0.0,
                            warmup_steps: int = 0) -> Callable:
  """Cosine annealing to `eta_min` with linear warm-up: the sequence the official training steps.

  Step s (0-based) is upstream's iteration s + 1. Warm-up W > 1 sets `lr * (s + 1) / W` while
  s + 1 < W (basicsr/models/base_model.py `update_learning_rate`); torch's chained cosine then
  continues from the last warm-up value, so after W the curve is the closed form scaled to start
  there. After T it holds at `eta_min` (upstream never passes T).

  Args:
    learning_rate: peak (initial) learning rate.
    decay_steps: cosine period T (the total number of training steps upstream).
    eta_min: final learning rate.
    warmup_steps: linear warm-up length W (upstream `warmup_iter`); 1 or less disables it.

  Returns:
    An optax schedule `step -> learning rate`.
  """
  if decay_steps <= 0:
    raise errors.InvalidInputError(
        f'decay_steps must be positive, got {decay_steps}: pass a positive '
        '--config.num_train_steps (or --config.optim.decay_steps).')
  if not 0.0 <= eta_min <= learning_rate:
    raise errors.InvalidInputError(
        f'config.optim.eta_min={eta_min} must lie in [0, learning_rate={learning_rate}]: pass '
        f'--config.optim.eta_min=0, or a --config.optim.learning_rate of at least {eta_min}.')
  if warmup_steps >= decay_steps:
    raise errors.InvalidInputError(
        f'config.optim.warmup_steps={warmup_steps} must be smaller than the cosine period '
        f'{decay_steps} (config.optim.decay_steps, or config.num_train_steps when that is <= 0): '
        f'pass --config.optim.warmup_steps=0 (no warm-up), or a --config.num_train_steps (or '
        f'--config.optim.decay_steps) above {warmup_steps}.')
  if warmup_steps > 1:
    # Constants in Python's float64, whatever precision the step evaluates the schedule in.
    last_warm = learning_rate * (warmup_steps - 1) / warmup_steps
    chain_start = (1 + math.cos(math.pi * (warmup_steps - 2) / decay_steps)) / 2
    amplitude = (last_warm - eta_min) / chain_start
  else:
    amplitude = learning_rate - eta_min

  def schedule(step):
    step = jnp.minimum(step, decay_steps)
    lr = eta_min + amplitude * _cosine_factor(step, decay_steps)
    if warmup_steps > 1:
      lr = jnp.where(step + 1 < warmup_steps, learning_rate * (step + 1) / warmup_steps, lr)
    return lr

  return schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """torch's `clip_grad_norm_`: scale by `max_norm / norm` above `max_norm`; `update` takes a
  known `global_norm=`. Its state is optax's (empty), so checkpoints keep their tree."""

  def update_fn(updates, state, params=None, *, global_norm=None, **extra_args):
    del params, extra_args
    g_norm = optax.tree.norm(updates) if global_norm is None else global_norm
    trigger = jnp.squeeze(g_norm < max_norm)
    coefficient = max_norm / g_norm

    def clip_fn(t):
      return jax.lax.select(trigger, t, t * coefficient.astype(t.dtype))

    return jax.tree.map(clip_fn, updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def create_optimizer(learning_rate_fn: Callable, *, b1: float = 0.9, b2: float = 0.999,
                     eps: float = 1e-8, weight_decay: float = 0.0,
                     grad_clip_norm: float = 0.01) -> optax.GradientTransformation:
  """Global-norm clipping, then PyTorch-style Adam, then the learning-rate schedule.

  Args:
    learning_rate_fn: schedule from `create_learning_rate_fn`.
    b1: Adam beta1.
    b2: Adam beta2 (0.999 for SIDD, 0.99 for GoPro/REDS/Rain13k upstream).
    eps: Adam epsilon (torch default 1e-8, added to sqrt(v_hat) as in torch and optax).
    weight_decay: torch Adam's L2 term (added to the gradient, not decoupled); 0 upstream.
    grad_clip_norm: max global gradient norm (torch adds 1e-6 to the norm); 0 or less: none.

  Returns:
    The optax transformation; its `update` takes `global_norm=` (the gradients' norm, if known).
  """
  parts = []
  if grad_clip_norm and grad_clip_norm > 0:
    parts.append(clip_by_global_norm(grad_clip_norm))
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
  parts.append(optax.scale_by_learning_rate(learning_rate_fn))
  return optax.chain(*parts)
