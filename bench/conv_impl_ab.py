r"""In-process A/B of the model's `conv_impl` choices: whole-model forward and train step.

  python bench/conv_impl_ab.py --variants=0.5x,1x --impls=xla,auto --reps=7 --ab_cases=fwd256
  python bench/conv_impl_ab.py --impls=auto,auto+eigen --ab_cases=fwd256,fwd_b4_256

An impl 'NAME+eigen' compiles with `convolution.inference_compiler_options` (XLA's own
convolutions instead of YNNPACK's). Each (variant, case) runs in a fresh subprocess pinned to --threads CPUs (as model_speed.py).
Inside it every impl is compiled once, then the impls run interleaved, the order rotated each
round, so background load hits all alike; medians and minima are printed. Cases: fwd256
(batch 1, 256x256, stage-2 output) and train_b2_128 (forward + backward + Adam, PSNR loss on
both stages, batch 2 of 128x128), the same definitions as model_speed.py. The outputs of every
impl are compared with the first (max relative difference).
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import model_speed  # pylint: disable=g-import-not-at-top,wrong-import-position

# --variants, --threads and --reps are model_speed.py's flags (imported above).
_IMPLS = flags.DEFINE_list('impls', ['xla', 'auto'], 'conv_impl values to compare.')
_AB_CASES = flags.DEFINE_list('ab_cases', ['fwd256', 'train_b2_128'], 'fwd256, train_b2_128.')
_AB_WORKER = flags.DEFINE_string('ab_worker', None, 'Internal: one (variant, case) job as JSON.')
_VARIANTS, _THREADS, _REPS = model_speed._VARIANTS, model_speed._THREADS, model_speed._REPS  # pylint: disable=protected-access


def worker(spec):
  """Times every impl of one (variant, case); returns {impl: {median_ms, min_ms}}."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from hinet_jax import convolution  # pylint: disable=g-import-not-at-top
  from hinet_jax import losses  # pylint: disable=g-import-not-at-top
  from hinet_jax import models  # pylint: disable=g-import-not-at-top

  preset = model_speed.VARIANT_PRESETS[spec['variant']]
  b, h, w, train = model_speed.case_shape(spec['case'])
  inputs = model_speed.make_inputs(spec['case'])
  x, y = jax.device_put(inputs['x']), jax.device_put(inputs['y'])
  params0 = models.init_params(models.create_model(preset), jax.random.key(0))
  runs, outs = {}, {}
  for impl in spec['impls']:
    # 'IMPL+eigen': the forward compiled with XLA's own (Eigen) convolutions instead of YNNPACK.
    conv_impl, _, backend = impl.partition('+')
    options = convolution.inference_compiler_options(force=True) if backend == 'eigen' else None
    model = models.create_model(preset, conv_impl=conv_impl)
    if not train:
      fwd = jax.jit(lambda p, x, m=model: m.apply({'params': p}, x)[1], compiler_options=options)
      runs[impl] = (lambda f=fwd: f(params0, x).block_until_ready())
      continue
    tx = optax.adam(1e-4)

    def step(p, s, m=model):
      loss, g = jax.value_and_grad(lambda p: losses.multi_stage_loss(
          m.apply({'params': p}, x), y, name='psnr', weight=0.5)[0])(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss

    step = jax.jit(step, compiler_options=options)
    state = tx.init(params0)
    # Not donated: every impl steps from the same params, so the losses are comparable.
    runs[impl] = (lambda f=step, s=state: jax.block_until_ready(f(params0, s))[2])
  ref = None
  for impl, run in runs.items():
    out = np.asarray(run())
    outs[impl] = out
    ref = out if ref is None else ref
  times = {impl: [] for impl in runs}
  names = list(runs)
  for r in range(spec['reps']):
    for impl in names[r % len(names):] + names[:r % len(names)]:
      t0 = time.perf_counter()
      runs[impl]()
      times[impl].append(time.perf_counter() - t0)
  rel = lambda a: float(np.linalg.norm((a - ref).ravel()) / (np.linalg.norm(ref.ravel()) + 1e-30))
  return {impl: {'median_ms': 1e3 * statistics.median(t), 'min_ms': 1e3 * min(t),
                 'rel_diff': rel(outs[impl])} for impl, t in times.items()}


def main(argv):
  del argv
  if _AB_WORKER.value:
    spec = json.loads(_AB_WORKER.value)
    model_speed.pin_threads(spec['threads'])
    sys.path.insert(0, model_speed._ROOT)  # pylint: disable=protected-access
    print(model_speed.RESULT_PREFIX + json.dumps(worker(spec)), flush=True)
    return
  print('| variant | case | impl | median ms | min ms | vs first | rel. diff | load before |')
  print('|---|---|---|---|---|---|---|---|')
  for variant in _VARIANTS.value:
    for case in _AB_CASES.value:
      spec = dict(variant=variant, case=case, impls=_IMPLS.value, threads=_THREADS.value,
                  reps=_REPS.value)
      load = os.getloadavg()[0]
      proc = subprocess.run([sys.executable, os.path.abspath(__file__),
                             '--ab_worker=' + json.dumps(spec)], capture_output=True, text=True,
                            check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith(model_speed.RESULT_PREFIX)]
      if proc.returncode or not lines:
        sys.exit(f'worker failed for {variant}/{case}:\n{proc.stderr[-4000:]}')
      res = json.loads(lines[-1][len(model_speed.RESULT_PREFIX):])
      first = res[_IMPLS.value[0]]['median_ms']
      for impl, r in res.items():
        print(f"| {variant} | {case} | {impl} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | "
              f"{first / r['median_ms']:.2f}x | {r['rel_diff']:.1e} | {load:.1f} |", flush=True)


if __name__ == '__main__':
  app.run(main)
