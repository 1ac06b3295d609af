"""The official optimizer recipe as optax: grad clipping -> Adam -> cosine annealing (+ warm-up).

Upstream (megvii-model/HINet, `basicsr/models/image_restoration_model.py` `optimize_parameters`)
clips the global gradient norm at a hard-coded 0.01 whenever `use_grad_clip` is unset or true (it is
never false in the published option files), then steps `torch.optim.Adam` whose learning rate
follows `torch.optim.lr_scheduler.CosineAnnealingLR(T_max=400k, eta_min)` (`TrueCosineAnnealingLR`
in `basicsr/models/base_model.py` `setup_schedulers`), with an optional linear warm-up that
overrides it for the first `warmup_iter` iterations (`base_model.py` `update_learning_rate`).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def create_learning_rate_fn(*, learning_rate: float, decay_steps: int, eta_min: float = 0.0,
                            warmup_steps: int = 0) -> Callable:
  """Cosine annealing from `learning_rate` to `eta_min` over `decay_steps`, with linear warm-up.

  Step s (0-based, the s-th update) gets torch's `CosineAnnealingLR` value
  `eta_min + (lr - eta_min) * (1 + cos(pi * s / T)) / 2` (held at `eta_min` after T). During
  warm-up it gets `lr * (s + 1) / warmup_steps` instead, as upstream's `update_learning_rate`
  (1-based iteration / warmup_iter) overrides the scheduler while the cosine keeps counting.

  Args:
    learning_rate: peak (initial) learning rate.
    decay_steps: cosine period T (the total number of training steps upstream).
    eta_min: final learning rate.
    warmup_steps: linear warm-up length; 0 or less disables it.

  Returns:
    An optax schedule `step -> learning rate`.
  """
  if decay_steps <= 0:
    raise ValueError(f'decay_steps must be positive, got {decay_steps} (config.optim.decay_steps '
                     'or config.num_train_steps).')
  if not 0.0 <= eta_min <= learning_rate:
    raise ValueError(f'eta_min ({eta_min}) must lie in [0, learning_rate={learning_rate}].')
  cosine = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=eta_min / learning_rate
                                       if learning_rate > 0 else 0.0)
  if warmup_steps <= 0:
    return cosine

  def schedule(step):
    warm = learning_rate * (step + 1) / warmup_steps
    return jnp.where(step + 1 < warmup_steps, warm, cosine(step))

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
