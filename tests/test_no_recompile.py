"""Nothing recompiles after the first call: tiled inference over images of many sizes, training.

Two counters: a trace counter (a Python wrapper around the model's apply, which only runs while JAX
traces) and a backend-compile counter (jax.monitoring's compile-duration event). The second catches
recompiles that reuse a cached trace, e.g. for a change of input sharding or committedness.
"""

import contextlib

import jax
import numpy as np

from hinet_jax import backends
from hinet_jax import models
from hinet_jax.configs import tiny
from hinet_jax.evaluation import inference
from hinet_jax.train import sharding
from hinet_jax.train import step as step_lib

TINY = dict(wf=8, depth=2, hin_position_left=0, hin_position_right=1)
_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


class CountingModel:
  """Forwards `apply` to a Flax module and counts how often it is traced."""

  def __init__(self, model):
    self.model = model
    self.traces = 0

  def apply(self, variables, *args, **kwargs):
    self.traces += 1  # Runs only while tracing: a compiled call never re-enters Python here.
    return self.model.apply(variables, *args, **kwargs)

  def __getattr__(self, name):  # init, depth, in_chn, ... as the wrapped module's.
    return getattr(self.model, name)


def _counting_tiny_model():
  """The tiny HINet on this platform's default backend, its apply counted."""
  return CountingModel(backends.build(models.HINet(**TINY)))


@contextlib.contextmanager
def count_compiles():
  """Yields a one-element list holding the number of XLA compilations inside the block."""
  count = [0]

  def listener(event, duration_secs, **kwargs):
    del duration_secs, kwargs
    if event == _COMPILE_EVENT:
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield count
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_tiled_inference_compiles_once_for_all_image_sizes():
  counting = _counting_tiny_model()
  params = models.init_params(counting.model, 0)
  predict = inference.Forward(counting)
  rng = np.random.default_rng(0)
  tile = 32
  # Sizes: exact tiles, non-multiples (adaptive step, padded last batch), smaller than a tile
  # (reflect-padded up), wide and tall; one with overlap, one under the x8 self-ensemble.
  calls = [((64, 64), {}), ((40, 72), {}), ((20, 24), {}), ((33, 100), {}),
           ((90, 45), dict(overlap=8)), ((48, 40), dict(self_ensemble=True))]
  first_shape, first_kwargs = calls[0]
  inference.restore_image(predict, params, rng.random(first_shape + (3,), np.float32), tile=tile,
                          batch_size=3, **first_kwargs)
  traces = counting.traces  # The forward, and any pass that prepares variables once.
  assert traces >= 1
  with count_compiles() as compiles:
    for shape, kwargs in calls[1:]:
      out = inference.restore_image(predict, params, rng.random(shape + (3,), np.float32),
                                    tile=tile, batch_size=3, **kwargs)
      assert out.shape == shape + (3,)
  assert counting.traces == traces, 'tiled inference retraced the model for a new image size'
  assert compiles[0] == 0, f'tiled inference recompiled {compiles[0]} times after the first call'


def test_train_step_compiles_once():
  config = tiny.get_config()
  backend = backends.resolve(config.backend)
  model = backend.build(models.create_model(**config.model))
  lr_fn = step_lib.create_learning_rate_fn(config)
  tx = step_lib.create_optimizer(config, lr_fn)
  mesh = sharding.create_mesh()
  counting = CountingModel(model)  # The state's apply_fn is then the counting one.
  state, _, shardings = step_lib.init_state(counting, tx, mesh, config.seed)
  step_fn = step_lib.make_train_step(config, lr_fn, shardings, mesh,
                                     skip_by_cond=backend.skip_step_by_cond)
  rng = np.random.default_rng(0)
  shape = (config.batch_size, config.data.crop_size, config.data.crop_size, config.model.in_chn)

  def batch():
    gt = rng.random(shape, np.float32)
    lq = np.clip(gt + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
    return sharding.put_batch({'lq': lq, 'gt': gt}, sharding.batch_sharding(mesh))

  state, m = step_fn(state, batch())
  jax.block_until_ready(m)
  assert counting.traces == 1
  with count_compiles() as compiles:
    for _ in range(3):
      state, m = step_fn(state, batch())
      step_lib.compute_metrics(m)  # Fetch the metrics each step, as the training loop does.
  assert counting.traces == 1, 'the train step retraced after the first step'
  assert compiles[0] == 0, f'the train step recompiled {compiles[0]} times after the first step'
