"""The official optimizer recipe as optax: grad clipping -> Adam -> cosine annealing (+ warm-up).

Upstream (megvii-model/HINet, `basicsr/models/image_restoration_model.py` `optimize_parameters`)
clips the global gradient norm at a hard-coded 0.01 whenever `use_grad_clip` is unset or true (it is
never false in the published option files), then steps `torch.optim.Adam` whose learning rate
follows `torch.optim.lr_scheduler.CosineAnnealingLR(T_max=400k, eta_min)` (`TrueCosineAnnealingLR`
in `basicsr/models/base_model.py` `setup_schedulers`), with an optional linear warm-up that
overrides it for the first `warmup_iter` iterations (`base_model.py` `update_learning_rate`).
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from hinet_jax import errors


def _cosine_factor(step, decay_steps: int):
  """torch's cosine shape `(1 + cos(pi * step / T)) / 2` written as `sin^2(pi * (T - step) / 2T)`.

  The same value, but `T - step` is an exact integer, so float32 keeps a few ulps of relative
  accuracy up to the end of the period, where the `1 + cos` form loses all of it.
  """
  return jnp.square(jnp.sin((decay_steps - step) * (math.pi / (2 * decay_steps))))


def create_learning_rate_fn(*, learning_rate: float, decay_steps: int, eta_min: float = 0.0,
                            warmup_steps: int = 0) -> Callable:
  """Cosine annealing from `learning_rate` to `eta_min` over `decay_steps`, with linear warm-up,
  the sequence the official training steps through.

  Step s (0-based, the s-th update) is upstream's 1-based iteration s + 1, at which torch's
  `CosineAnnealingLR` has `last_epoch = s`. Without warm-up it gets the closed form
  `eta_min + (lr - eta_min) * (1 + cos(pi * s / T)) / 2`, which torch's chained update
  `lr_s = eta_min + (lr_{s-1} - eta_min) * (1 + cos(pi s / T)) / (1 + cos(pi (s-1) / T))` telescopes
  to. With W = `warmup_steps` > 1, upstream's `update_learning_rate` (basicsr/models/base_model.py)
  overwrites the optimizer's lr with `lr * (s + 1) / W` while `s + 1 < W`, and the scheduler keeps
  chaining from whatever lr the optimizer holds. So the first step after warm-up scales the last
  warm-up value `lr * (W - 1) / W`, and from then on
  `lr_s = eta_min + (lr * (W - 1) / W - eta_min) * (1 + cos(pi s / T)) / (1 + cos(pi (W - 2) / T))`.
  Its `lr_s - eta_min` stands above the closed form's by the same factor at every step after
  warm-up, about `1 + (pi (W - 2) / T)^2 / 4 - 1 / W` for W << T: +0.14% for Rain13k's W 10k,
  T 400k.

  After T this holds at `eta_min`; torch's cosine would rise again, which upstream never reaches
  (T_max = total_iter in every official option file).

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
        f'decay_steps must be positive, got {decay_steps} (config.optim.decay_steps or '
        'config.num_train_steps).')
  if not 0.0 <= eta_min <= learning_rate:
    raise errors.InvalidInputError(
        f'config.optim.eta_min={eta_min} must lie in [0, learning_rate={learning_rate}].')
  if warmup_steps >= decay_steps:
    raise errors.InvalidInputError(
        f'config.optim.warmup_steps={warmup_steps} must be smaller than the cosine period '
        f'{decay_steps} (config.optim.decay_steps, or config.num_train_steps when that is <= 0).')
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
  """Global-norm clipping as the official code does it: torch's `clip_grad_norm_` scales every
  gradient by `max_norm / norm` when the norm exceeds `max_norm`.

  The state is `optax.clip_by_global_norm`'s (empty), so checkpoints keep their tree. `update`
  takes the gradients' norm as `global_norm=` where the caller has it (the train step does).

  Args:
    max_norm: the largest global norm left unscaled.

  Returns:
    The transformation.
  """

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
    grad_clip_norm: max global gradient norm; 0 or less disables clipping. torch's
      `clip_grad_norm_` divides by `norm + 1e-6`, this by `norm`: a 1e-6 relative difference.

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
