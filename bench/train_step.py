"""Train-step throughput of a config on this machine: steps/s and images/s.

  python bench/train_step.py --config=configs/demo.py
  python bench/train_step.py --config=configs/sidd.py:0.5x --config.batch_size=4 \
      --config.data.crop_size=128 --steps=5 --json=/tmp/bench.json

Times the compiled, sharded train step of `hinet_jax.train.step` (the one training uses) over all
devices on synthetic device-resident batches, so it measures compute, not input. `--data` feeds
the config's real grain pipeline instead (input + compute, as in training); give it
`--warmup_steps` past the pipeline's one-time costs (the demo source degrades each photo once, in
its first epoch of 20 batches: ~3 s on 2 cores) to time the steady state.
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from hinet_jax import backends
from hinet_jax import models
from hinet_jax.data import datasets
from hinet_jax.train import loop
from hinet_jax.train import sharding
from hinet_jax.train import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config (path[:arg]).',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (after the compile step and the warm-up).')
_WARMUP = flags.DEFINE_integer('warmup_steps', 1, 'Untimed steps after the compile step.')
_DATA = flags.DEFINE_bool('data', False, 'Use the real input pipeline instead of synthetic data.')
_JSON = flags.DEFINE_string('json', None, 'Also write the result as JSON to this path.')
flags.mark_flags_as_required(['config'])


def synthetic_batch(config, mesh):
  """One global batch of random images, placed with the batch sharding."""
  rng = np.random.default_rng(0)
  local = sharding.per_process_batch_size(config.batch_size, mesh)
  shape = (local, config.data.crop_size, config.data.crop_size, config.model.in_chn)
  gt = rng.random(shape, np.float32)
  lq = np.clip(gt + rng.normal(0, 0.1, shape), 0, 1).astype(np.float32)
  return sharding.put_batch({'lq': lq, 'gt': gt}, sharding.batch_sharding(mesh))


def benchmark(config, steps, use_data=False, warmup_steps=1):
  """Compiles and times the train step.

  Args:
    config: a training config.
    steps: timed steps.
    use_data: feed the config's input pipeline (else one synthetic batch, reused).
    warmup_steps: untimed steps after the compile step.

  Returns:
    dict of the measured figures.
  """
  mesh = sharding.create_mesh()
  backend = backends.resolve(config.backend)
  model = backend.build(models.create_model(**config.model))
  lr_fn = step_lib.create_learning_rate_fn(config)
  tx = step_lib.create_optimizer(config, lr_fn)
  state, _, shardings = step_lib.init_state(model, tx, mesh, config.seed)
  step_fn = step_lib.make_train_step(config, lr_fn, shardings, mesh,
                                     skip_by_cond=backend.skip_step_by_cond)
  if use_data:
    source = datasets.create_source(config.data.train)
    it = loop.create_train_iter(config, source, mesh)
    next_batch = lambda: next(it)
  else:
    batch = synthetic_batch(config, mesh)
    next_batch = lambda: batch
  t0 = time.perf_counter()
  state, m = step_fn(state, next_batch())
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup_steps):
    state, m = step_fn(state, next_batch())
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step_fn(state, next_batch())
  jax.block_until_ready((state, m))
  elapsed = time.perf_counter() - t0
  if use_data and hasattr(it, 'close'):
    it.close()
  return dict(
      wf=model.wf, depth=model.depth, dtype=config.model.dtype, backend=backend.name,
      params_m=models.count_params(state.params) / 1e6, batch=config.batch_size,
      crop=config.data.crop_size, devices=jax.device_count(), warmup_steps=warmup_steps,
      platform=jax.devices()[0].device_kind, input='grain' if use_data else 'synthetic',
      compile_s=compile_s, step_ms=1e3 * elapsed / steps, steps_per_s=steps / elapsed,
      images_per_s=steps * config.batch_size / elapsed,
      mpix_per_s=steps * config.batch_size * config.data.crop_size**2 / elapsed / 1e6)


def format_table(result):
  """Two-row text table of the result."""
  keys = list(result)
  cells = [f'{v:.3g}' if isinstance(v, float) else str(v) for v in result.values()]
  widths = [max(len(k), len(c)) for k, c in zip(keys, cells)]
  return '\n'.join(' | '.join(x.rjust(w) for x, w in zip(row, widths)) for row in (keys, cells))


def main(argv):
  del argv
  flags.FLAGS.mark_as_parsed()
  backends.prepare_process()  # as train.py does, before JAX runs anything
  result = benchmark(_CONFIG.value, _STEPS.value, _DATA.value, _WARMUP.value)
  result['config'] = config_flags.get_config_filename(flags.FLAGS['config'])
  print(format_table(result))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  app.run(main)
