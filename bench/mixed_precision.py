r"""Mixed precision check: one training run per compute dtype, same start, same batches.

  python bench/mixed_precision.py --config=configs/demo.py --json=/tmp/mp.json --plot=/tmp/mp.png
  python bench/mixed_precision.py --config=configs/demo.py --config.num_train_steps=100  # quick

Trains the config with the library's own pieces (`hinet_jax.train`: input pipeline, schedule,
optimizer, the compiled train step) once for each of --dtypes (`config.model.dtype`; parameters,
optimizer state, instance-norm statistics and the loss stay float32), from the same initial
parameters over the same batches, then runs the config's validation on the result. No checkpoints,
no TensorBoard: it needs no TensorFlow.

Reports, per dtype: the loss of every step, steps/s after compilation, final validation PSNR/SSIM;
and between the first dtype and each other one: the mean and largest |difference| of the 50-step
moving averages of the loss. With the PSNR loss over both stages (weight 0.5 each) the loss is about
minus the mean PSNR of the two stages, so those differences read in dB. --plot draws the curves
(matplotlib, when installed).
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from hinet_jax import backends
from hinet_jax.evaluation import inference
from hinet_jax import models
from hinet_jax.data import datasets
from hinet_jax.train import config_checks
from hinet_jax.train import loop
from hinet_jax.train import resume
from hinet_jax.train import sharding
from hinet_jax.train import step as step_lib
from hinet_jax.train import validation
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/demo.py', 'Training config.',
                                          lock_config=False)
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'],
                            'Compute dtypes; the first is the reference.')
_WINDOW = flags.DEFINE_integer('window', 50, 'Moving-average window (steps) for the comparison.')
_JSON = flags.DEFINE_string('json', None, 'Write curves and results as JSON to this path.')
_PLOT = flags.DEFINE_string('plot', None, 'Draw the loss curves to this PNG (needs matplotlib).')


def train_run(config, dtype):
  """Trains `config` with compute `dtype`; returns its per-step measurements and validation."""
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  config_checks.validate_config(config)
  mesh = sharding.create_mesh()
  backend = backends.resolve(config.backend)
  model = backend.build(models.create_model(**config.model))
  lr_fn = step_lib.create_learning_rate_fn(config)
  tx = step_lib.create_optimizer(config, lr_fn)
  state, _, shardings = step_lib.init_state(model, tx, mesh, config.seed,
                                            resume.initial_params(config, model))
  step_fn = step_lib.make_train_step(config, lr_fn, shardings, mesh,
                                     skip_by_cond=backend.skip_step_by_cond)
  train_source = datasets.create_source(config.data.train)
  val_source = next(iter(dict(datasets.create_val_sources(config.data.val)).values()))
  train_iter = loop.create_train_iter(config, train_source, mesh)
  history = []
  try:
    t0 = time.perf_counter()
    for step in range(config.num_train_steps):
      state, measurements = step_fn(state, next(train_iter))
      history.append(measurements)  # Read back at the end: no host sync inside the loop.
      if step == 0:
        jax.block_until_ready(measurements)
        compile_s, t1 = time.perf_counter() - t0, time.perf_counter()
    jax.block_until_ready(state)
    steps_per_s = (config.num_train_steps - 1) / max(time.perf_counter() - t1, 1e-9)
  finally:
    if hasattr(train_iter, 'close'):
      train_iter.close()
  history = [step_lib.compute_metrics(m) for m in jax.device_get(history)]
  val = validation.evaluate(inference.Forward(model, backend), state.params, config,
                            val_source)
  return dict(
      dtype=dtype, steps=config.num_train_steps, compile_s=compile_s, steps_per_s=steps_per_s,
      loss=[m['loss'] for m in history], train_psnr=[m['psnr'] for m in history],
      skipped_steps=int(history[-1]['skipped_steps']), val=val)


def moving_average(values, window):
  """Trailing moving average (the first `window - 1` entries average what is there)."""
  c = np.cumsum(np.insert(np.asarray(values, np.float64), 0, 0.0))
  n = np.arange(1, len(values) + 1)
  lo = np.maximum(n - window, 0)
  return (c[n] - c[lo]) / (n - lo)


def compare(ref, run, window):
  """Trajectory gap between two runs (loss units, about dB for the PSNR loss)."""
  a, b = moving_average(ref['loss'], window), moving_average(run['loss'], window)
  gap = np.abs(a - b)
  return dict(mean_abs_gap=float(gap.mean()), max_abs_gap=float(gap.max()),
              final_loss_ref=float(a[-1]), final_loss=float(b[-1]),
              val_psnr_diff=run['val']['psnr'] - ref['val']['psnr'],
              val_ssim_diff=run['val']['ssim'] - ref['val']['ssim'],
              speedup=run['steps_per_s'] / ref['steps_per_s'])


def plot(runs, window, path):
  """Loss curves (moving averages) of every run in one PNG."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    print(f'--plot={path}: matplotlib is not installed; pip install matplotlib, or plot the '
          'JSON.', file=sys.stderr)
    return
  fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
  for r in runs:
    ax.plot(np.arange(1, r['steps'] + 1), moving_average(r['loss'], window),
            label=f"{r['dtype']}: val PSNR {r['val']['psnr']:.2f} dB, {r['steps_per_s']:.1f} "
                  'steps/s')
  ax.set_xlabel('step')
  ax.set_ylabel(f'PSNR loss ({window}-step moving average)')
  ax.set_title(f"HINet training loss by compute dtype ({jax.devices()[0].device_kind})")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  print('wrote', path)


def main(argv):
  del argv
  backends.prepare_process()  # as train.py does, before JAX runs anything
  config = _CONFIG.value
  for path in (_JSON.value, _PLOT.value):
    if path and os.path.exists(path):
      raise app.UsageError(f'{path} exists; pass another path (results are never overwritten).')
  runs = []
  for dtype in _DTYPES.value:
    runs.append(train_run(config, dtype))
    r = runs[-1]
    print(f"{dtype}: {r['steps']} steps, compile {r['compile_s']:.1f} s, "
          f"{r['steps_per_s']:.1f} steps/s, val PSNR {r['val']['psnr']:.2f} dB, "
          f"SSIM {r['val']['ssim']:.4f}, skipped steps {r['skipped_steps']}", flush=True)
  comparisons = {r['dtype']: compare(runs[0], r, _WINDOW.value) for r in runs[1:]}
  for dtype, c in comparisons.items():
    print(f'{dtype} vs {runs[0]["dtype"]}: loss gap (moving average) mean {c["mean_abs_gap"]:.3f}, '
          f'max {c["max_abs_gap"]:.3f}; final loss {c["final_loss"]:.3f} vs '
          f'{c["final_loss_ref"]:.3f}; val PSNR {c["val_psnr_diff"]:+.3f} dB, SSIM '
          f'{c["val_ssim_diff"]:+.4f}; {c["speedup"]:.2f}x steps/s')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(dict(config=config.to_dict(), device=jax.devices()[0].device_kind,
                     devices=jax.device_count(), window=_WINDOW.value, runs=runs,
                     comparisons=comparisons), f, indent=1)
  if _PLOT.value:
    plot(runs, _WINDOW.value, _PLOT.value)


if __name__ == '__main__':
  app.run(main)
