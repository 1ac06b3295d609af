"""The train step, a pure function, and the state it steps: creation, shardings, the jitted form.

`train_step(state, batch)` computes both stages' losses and their gradients, takes one optimizer
step, and returns the new state with the step's `TrainMetrics` (a `clu.metrics.Collection` the loop
merges between log steps). A step whose loss or gradient norm is not finite leaves the parameters
and optimizer state unchanged and is counted instead (`TrainState.nonfinite_streak`,
`skipped_steps`); the loop decides when too many in a row stop the run. With
`config.grad_accum_steps` k > 1 the step averages the gradients of k micro-batches of its batch
before that one update (the official global batch on fewer devices).
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
  """Flax TrainState plus the non-finite step counters (both int32 scalars).

  Attributes:
    nonfinite_streak: how many steps in a row were skipped for a non-finite loss or gradient.
    skipped_steps: how many steps were skipped in total.
  """

  nonfinite_streak: jax.Array = None
  skipped_steps: jax.Array = None


def _applied_average(name: str):
  """`clu.metrics.Average` of output `name` over the steps that were applied (a skipped step's
  values, often NaN, are left out: its `finite` output is the mask)."""
  return clu_metrics.Average.from_fun(
      lambda finite, **outputs: {'values': outputs[name][None], 'mask': finite[None]})


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """What one step measured; `merge` several and `compute()` their means (on host or device).

  Losses, PSNR (stage 2 against the target, clipped to [0, 1]) and the norms average over applied
  steps; the learning rate and the counters are the last step's.
  """

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
  """`metrics.compute()` as Python floats, fetched from the device first.

  Args:
    metrics: one step's `TrainMetrics` or a merge of several.

  Returns:
    {name: float}; an average over no applied steps is NaN.
  """
  with np.errstate(invalid='ignore', divide='ignore'):
    return {k: float(v) for k, v in jax.device_get(metrics).compute().items()}


# --------------------------------------------------------------------------------------------
# Optimizer and state.


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
  """A fresh TrainState (step 0) around `params`. Pure: jit it with out_shardings to create it in
  place.

  Args:
    apply_fn: the model's `apply`.
    tx: the optax transformation.
    params: the initial parameters.

  Returns:
    The state.
  """
  zero = jnp.zeros((), jnp.int32)
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx, nonfinite_streak=zero,
                           skipped_steps=zero)


def state_shardings(abstract_state: Any, mesh: jax.sharding.Mesh) -> Any:
  """Every leaf of the state replicated over the mesh (pure data parallelism)."""
  repl = sharding.replicated(mesh)
  return jax.tree.map(lambda _: repl, abstract_state)


def abstract_state(model: models.HINet, tx, mesh: jax.sharding.Mesh) -> Tuple[Any, Any]:
  """Shapes, dtypes and shardings of the TrainState, without computing it.

  Args:
    model: the HINet.
    tx: the optax transformation.
    mesh: the data mesh.

  Returns:
    `(abstract, shardings)`: ShapeDtypeStructs carrying their shardings (the orbax restore target)
    and the sharding tree (the jit in/out shardings).
  """
  create = functools.partial(create_train_state, model.apply, tx)
  abstract = jax.eval_shape(create, models.abstract_params(model))
  shardings = state_shardings(abstract, mesh)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
  return abstract, shardings


def init_state(model: models.HINet, tx, mesh: jax.sharding.Mesh, seed: int,
               params: Any = None) -> Tuple[TrainState, Any, Any]:
  """Creates the state directly with its shardings.

  The parameters are initialised on the host (`models.init_params`: the same values on every
  host and platform for a seed) and copied to the mesh once; the optimizer state is created there.

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
  # From host memory as global arrays: the same on every process, so multi-process runs work too.
  params = jax.tree.map(
      lambda x, s: jax.make_array_from_process_local_data(s.sharding, np.asarray(x)),
      jax.device_get(params), abstract.params)
  create = functools.partial(create_train_state, model.apply, tx)
  state = jax.jit(create, out_shardings=shardings)(params)
  return state, abstract, shardings


# --------------------------------------------------------------------------------------------
# The step.


def _select(pred: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _update_if_finite(state: TrainState, grads: Any, grad_norm: jax.Array, finite: jax.Array,
                      by_cond: bool) -> Tuple[Any, Any]:
  """(params, opt_state) after the optimizer's step, or the state's own where `finite` is False.

  `by_cond` branches with `lax.cond`, otherwise both are computed and selected: the backend
  decides (`Backend.skip_step_by_cond`). With selects XLA:CPU copies every optimizer moment at
  the start of each step to update it in place (bench/README.md).
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
  """The loss gradients on `batch` and what the step reports of it (means over its rows).

  Returns:
    `(grads, measures)`: measures holds 'loss', 'loss_stage<i>' and 'psnr' (stage 2 against the
    target, clipped to [0, 1]).
  """

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
  """Stacks `num_micro` equal micro-batches of `batch`, each taking the same share of every shard.

  Row r of shard d (rows d*b .. (d+1)*b - 1 of the global batch, b = B / num_shards) goes to
  micro-batch r // (b / num_micro): the split runs along each device's own rows, so every
  micro-batch stays spread over all devices and no row changes device.

  Args:
    batch: arrays with the global batch B leading.
    num_micro: micro-batches k; divides b.
    num_shards: devices along the batch axis.

  Returns:
    The same tree with leaves (k, B / k, ...).
  """

  def split(x):
    per_shard = x.shape[0] // num_shards
    x = x.reshape(num_shards, num_micro, per_shard // num_micro, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(num_micro, -1, *x.shape[3:])

  return jax.tree.map(split, batch)


def _accumulated_grads(grads_fn: Callable, params: Any, batch: Dict[str, jax.Array],
                       num_micro: int, micro_sharding: Any) -> Tuple[Any, Dict[str, jax.Array]]:
  """`grads_fn` over `num_micro` micro-batches in a `lax.scan`, averaged: the whole batch's.

  Every loss is a mean of per-row terms (HIN normalises each image alone), so with equal
  micro-batches the mean of their gradients and measures is the whole batch's. Sums keep a
  non-finite value of any micro-batch, so the step's finiteness check sees all of them. Sums run
  in float32 whatever the parameter dtype.
  """
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

  With `grad_accum_steps` k > 1 the batch is cut into k micro-batches (`split_micro_batches`)
  whose gradients are averaged in a scan before the one update: the same update as the whole
  batch at once (to float rounding), in the memory of one micro-batch. Clipping, the finiteness
  check, the schedule, the step counter and the metrics all see the update, not micro-batches.

  Args:
    state: the TrainState.
    batch: {'lq', 'gt'} float32 NHWC in [0, 1].
    loss_name: 'psnr' or 'l1'.
    loss_weight: per-stage loss weight.
    lr_fn: the schedule (for logging only; the optimizer holds its own copy).
    skip_by_cond: skip a non-finite step by `lax.cond` rather than by selects (the backend's
      `skip_step_by_cond`; the same result).
    grad_accum_steps: micro-batches per update k; divides each device's share of the batch.
    micro_sharding: the sharding of the stacked micro-batches, (k, B / k, ...) split over the
      data axis on the second dimension (`make_train_step`); None when the batch is not sharded.

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
  """Checks that `grad_accum_steps` splits each device's share of the batch evenly.

  A batch that does not split over the devices at all is `sharding.per_process_batch_size`'s
  error, not this one's.

  Args:
    batch_size: `config.batch_size`, the global batch.
    num_devices: devices along the data axis.
    grad_accum_steps: `config.grad_accum_steps`.

  Raises:
    InvalidInputError: it does not (naming both options and a fix).
  """
  per_device, uneven = divmod(batch_size, num_devices)
  if uneven or (grad_accum_steps >= 1 and per_device % grad_accum_steps == 0):
    return
  divisors = [k for k in range(1, per_device + 1) if per_device % k == 0]
  raise errors.InvalidInputError(
      f'config.grad_accum_steps={grad_accum_steps} must divide the batch of each device: '
      f'config.batch_size={batch_size} over {num_devices} device(s) is {per_device} per device. '
      f'Use --config.grad_accum_steps= one of {divisors}, or a config.batch_size that is a '
      f'multiple of {num_devices * max(grad_accum_steps, 1)}.')


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

  Raises:
    InvalidInputError: `config.grad_accum_steps` does not divide the per-device batch.
  """
  check_grad_accum_steps(config.batch_size, mesh.devices.size, config.grad_accum_steps)
  fn = functools.partial(train_step, loss_name=config.loss.name, loss_weight=config.loss.weight,
                         lr_fn=lr_fn, skip_by_cond=skip_by_cond,
                         grad_accum_steps=config.grad_accum_steps,
                         micro_sharding=_micro_batch_sharding(mesh))
  return jax.jit(fn, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
