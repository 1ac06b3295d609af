"""The train step, a pure function, and the state it steps: creation, shardings, the jitted form.

A step whose loss or gradient norm is not finite leaves params and optimizer state unchanged and
is counted; with `config.grad_accum_steps` k > 1 it averages k micro-batches' gradients first.
"""

import functools
from typing import Any, Callable, Dict, Tuple

import flax
from clu import metrics as clu_metrics
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hinet_jax import errors
from hinet_jax import models
from hinet_jax.evaluation import metrics as metrics_lib
from hinet_jax.train import losses
from hinet_jax.train import optim
from hinet_jax.train import sharding


class TrainState(train_state.TrainState):
  """Flax TrainState plus int32 counts of skipped steps: in a row, and in total."""

  nonfinite_streak: jax.Array = None
  skipped_steps: jax.Array = None


def _applied_average(name: str):
  """`clu.metrics.Average` of output `name` over applied steps (`finite` masks skipped ones)."""
  return clu_metrics.Average.from_fun(
      lambda finite, **outputs: {'values': outputs[name][None], 'mask': finite[None]})


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """One step's measures; merged ones average over applied steps (lr and counters: the last)."""

  loss: _applied_average('loss')
  loss_stage1: _applied_average('loss_stage1')
  loss_stage2: _applied_average('loss_stage2')
  psnr: _applied_average('psnr')
  grad_norm: _applied_average('grad_norm')
  param_norm: _applied_average('param_norm')
  lr: clu_metrics.LastValue.from_output('lr')
  nonfinite_streak: clu_metrics.LastValue.from_output('nonfinite_streak')
  skipped_steps: clu_metrics.LastValue.from_output('skipped_steps')


def compute_metrics(metrics: TrainMetrics) -> Dict[str, float]:
  """`metrics.compute()` as Python floats (an average over no applied steps is NaN)."""
  with np.errstate(invalid='ignore', divide='ignore'):
    return {k: float(v) for k, v in jax.device_get(metrics).compute().items()}


def create_learning_rate_fn(config: ml_collections.ConfigDict) -> Callable:
  """The schedule of `config.optim` (decay over num_train_steps unless optim.decay_steps > 0)."""
  o = config.optim
  decay = o.decay_steps if o.decay_steps > 0 else config.num_train_steps
  return optim.create_learning_rate_fn(learning_rate=o.learning_rate, decay_steps=decay,
                                       eta_min=o.eta_min, warmup_steps=o.warmup_steps)


def create_optimizer(config: ml_collections.ConfigDict, lr_fn: Callable):
  """The optax transformation of `config.optim`."""
  o = config.optim
  return optim.create_optimizer(lr_fn, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                                grad_clip_norm=o.grad_clip_norm)


def create_train_state(apply_fn: Callable, tx, params: Any) -> TrainState:
  """A fresh TrainState (step 0) around `params`; jit it with out_shardings to create it in place."""
  zero = jnp.zeros((), jnp.int32)
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx, nonfinite_streak=zero,
                           skipped_steps=zero)


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
  """Every leaf of the state replicated over the mesh (pure data parallelism)."""
  repl = sharding.replicated(mesh)
  return jax.tree.map(lambda _: repl, abstract_state)


def abstract_state(model: models.HINet, tx, mesh: jax.sharding.Mesh) -> Tuple[Any, Any]:
  """`(abstract, shardings)` of the TrainState: the orbax restore target and the jit shardings."""
  create = functools.partial(create_train_state, model.apply, tx)
  abstract = jax.eval_shape(create, models.abstract_params(model))
  shardings = state_shardings(abstract, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def init_state(model: models.HINet, tx, mesh: jax.sharding.Mesh, seed: int,
               params: Any = None) -> Tuple[TrainState, Any, Any]:
  """Creates the state with its shardings from host-initialised params (the same on every host).

  Args:
    model: the HINet.
    tx: the optax transformation.
    mesh: the data mesh.
    seed: init seed (ignored when `params` is given).
    params: optional initial parameters (e.g. a pretrained checkpoint).

  Returns:
    `(state, abstract_state, shardings)` (see `abstract_state`).
  """
  abstract, shardings = abstract_state(model, tx, mesh)
  if params is None:
    params = models.init_params(model, seed)
  params = jax.tree.map(
      lambda x, s: jax.make_array_from_process_local_data(s.sharding, np.asarray(x)),
      jax.device_get(params), abstract.params)
  create = functools.partial(create_train_state, model.apply, tx)
  state = jax.jit(create, out_shardings=shardings)(params)
  return state, abstract, shardings


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _update_if_finite(state: TrainState, grads: Any, grad_norm: jax.Array, finite: jax.Array,
                      by_cond: bool) -> Tuple[Any, Any]:
  """(params, opt_state) after the update, or the old ones where not `finite`.

  `by_cond` (the backend's choice) branches with `lax.cond` instead of selecting; see
  bench/README.md for why CPU prefers it.
  """

  def update(params, opt_state):
    updates, opt_state = state.tx.update(grads, opt_state, params, global_norm=grad_norm)
    return optax.apply_updates(params, updates), opt_state

  if by_cond:
    return jax.lax.cond(finite, update, lambda p, o: (p, o), state.params, state.opt_state)
  params, opt_state = update(state.params, state.opt_state)
  return _select(finite, params, state.params), _select(finite, opt_state, state.opt_state)


def _measured_grads(apply_fn: Callable, params: Any, batch: Dict[str, jax.Array], *,
                    loss_name: str, loss_weight: float) -> Tuple[Any, Dict[str, jax.Array]]:
  """`(grads, measures)` on `batch`: 'loss', 'loss_stage<i>' and 'psnr' (stage 2, clipped)."""

  def loss_fn(params):
    outputs = apply_fn({'params': params}, batch['lq'])
    total, per_stage = losses.multi_stage_loss(outputs, batch['gt'], name=loss_name,
                                               weight=loss_weight)
    return total, (per_stage, outputs[-1])

  (loss, (per_stage, restored)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  measures = {f'loss_stage{i + 1}': value for i, value in enumerate(per_stage)}
  measures['loss'] = loss
  measures['psnr'] = jnp.mean(
      metrics_lib.psnr(jnp.clip(restored, 0.0, 1.0), batch['gt'], data_range=1.0))
  return grads, measures


def split_micro_batches(batch: Dict[str, jax.Array], num_micro: int, num_shards: int) -> Any:
  """`batch` (B leading) as `num_micro` stacked micro-batches (k, B / k, ...).

  Each device's own rows are split, so every micro-batch spans all devices and no row moves.
  """

  def split(x):
    per_shard = x.shape[0] // num_shards
    x = x.reshape(num_shards, num_micro, per_shard // num_micro, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(num_micro, -1, *x.shape[3:])

  return jax.tree.map(split, batch)


def _accumulated_grads(grads_fn: Callable, params: Any, batch: Dict[str, jax.Array],
                       num_micro: int, micro_sharding: Any) -> Tuple[Any, Dict[str, jax.Array]]:
  """`grads_fn` averaged over micro-batches in a `lax.scan`: the whole batch's, as every loss is a
  per-row mean. float32 sums keep any micro-batch's non-finite value for the step's check."""
  num_shards = 1 if micro_sharding is None else micro_sharding.mesh.shape[sharding.DATA_AXIS]
  micro_batches = split_micro_batches(batch, num_micro, num_shards)
  if micro_sharding is not None:
    micro_batches = jax.lax.with_sharding_constraint(micro_batches, micro_sharding)

  def add(total, micro_batch):
    out = grads_fn(params, micro_batch)
    return jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, out), None

  shapes = jax.eval_shape(grads_fn, params, jax.tree.map(lambda x: x[0], micro_batches))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), shapes)
  (grads, measures), _ = jax.lax.scan(add, zeros, micro_batches)
  grads = jax.tree.map(lambda g, p: (g / num_micro).astype(p.dtype), grads, params)
  return grads, jax.tree.map(lambda m: m / num_micro, measures)


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, loss_name: str,
               loss_weight: float, lr_fn: Callable, skip_by_cond: bool, grad_accum_steps: int = 1,
               micro_sharding: Any = None) -> Tuple[TrainState, TrainMetrics]:
  """One optimizer step on a global batch; skips it (state unchanged) if anything is non-finite.

  Args:
    state: the TrainState.
    batch: {'lq', 'gt'} float32 NHWC in [0, 1].
    loss_name: 'psnr' or 'l1'.
    loss_weight: per-stage loss weight.
    lr_fn: the schedule (logged only).
    skip_by_cond: the backend's `skip_step_by_cond` (see `_update_if_finite`).
    grad_accum_steps: micro-batches per update; divides each device's share of the batch.
    micro_sharding: sharding of the stacked micro-batches, or None when the batch is not sharded.

  Returns:
    `(new_state, metrics)`: the step's `TrainMetrics`.
  """
  grads_fn = functools.partial(_measured_grads, state.apply_fn, loss_name=loss_name,
                               loss_weight=loss_weight)
  if grad_accum_steps > 1:
    grads, measures = _accumulated_grads(grads_fn, state.params, batch, grad_accum_steps,
                                         micro_sharding)
  else:
    grads, measures = grads_fn(state.params, batch)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(measures['loss']) & jnp.isfinite(grad_norm)
  params, opt_state = _update_if_finite(state, grads, grad_norm, finite, skip_by_cond)
  streak = jnp.where(finite, 0, state.nonfinite_streak + 1).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, nonfinite_streak=streak,
      skipped_steps=state.skipped_steps + (1 - finite.astype(jnp.int32)))
  metrics = TrainMetrics.single_from_model_output(
      finite=finite, grad_norm=grad_norm, param_norm=optax.tree.norm(params),
      lr=jnp.asarray(lr_fn(state.step), jnp.float32), nonfinite_streak=streak,
      skipped_steps=new_state.skipped_steps, **measures)
  return new_state, metrics


def _micro_batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Stacked micro-batches (k, B / k, ...): each one split over the data axis."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.DATA_AXIS))


def check_grad_accum_steps(batch_size: int, num_devices: int, grad_accum_steps: int) -> None:
  """Fails, naming the fix, unless `grad_accum_steps` splits each device's batch evenly (a batch
  that does not split over the devices is `sharding.per_process_batch_size`'s error)."""
  per_device, uneven = divmod(batch_size, num_devices)
  if uneven or (grad_accum_steps >= 1 and per_device % grad_accum_steps == 0):
    return
  divisors = [k for k in range(1, per_device + 1) if per_device % k == 0]
  raise errors.InvalidInputError(
      f'config.grad_accum_steps={grad_accum_steps} must divide the batch of each device: '
      f'config.batch_size={batch_size} over {num_devices} device(s) is {per_device} per device. '
      f'Use --config.grad_accum_steps= one of {divisors}, or --config.batch_size= a multiple of '
      f'{num_devices * max(grad_accum_steps, 1)}.')


def make_train_step(config: ml_collections.ConfigDict, lr_fn: Callable, shardings: Any,
                    mesh: jax.sharding.Mesh, *, skip_by_cond: bool) -> Callable:
  """`train_step` jitted with explicit shardings; the state argument is donated.

  Args:
    config: the training config (`config.loss`, `config.grad_accum_steps`, `config.batch_size`).
    lr_fn: the schedule.
    shardings: the state shardings (`init_state`).
    mesh: the data mesh.
    skip_by_cond: the backend's `skip_step_by_cond` (see `train_step`).

  Returns:
    `step_fn(state, batch) -> (state, metrics)`, compiled once for the run.
  """
  check_grad_accum_steps(config.batch_size, mesh.devices.size, config.grad_accum_steps)
  fn = functools.partial(train_step, loss_name=config.loss.name, loss_weight=config.loss.weight,
                         lr_fn=lr_fn, skip_by_cond=skip_by_cond,
                         grad_accum_steps=config.grad_accum_steps,
                         micro_sharding=_micro_batch_sharding(mesh))
  return jax.jit(fn, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
