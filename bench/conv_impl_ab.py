r"""In-process A/B of the CPU backend's convolution forms: whole-model forward and train step.

  python bench/conv_impl_ab.py --variants=0.5x,1x --impls=xla,auto --reps=7
  python bench/conv_impl_ab.py --impls=auto,auto+eigen,auto+ynn --ab_cases=fwd256,fwd_b4_256

An impl is 'xla' (the plain model, XLA's backend) or a form of the CPU backend's layers
(`hinet_jax.cpu.convolution.CONV_IMPLS`, all its convolutions in that form), optionally with '+eigen' (every executable compiled with
`convolution.inference_compiler_options()`: XLA's own convolutions) or '+ynn' (none: YNNPACK's);
without a suffix it runs as the library does (the forward through `inference.Forward`,
kernels packed once; with a suffix, the forward packs them in every call). Each (variant, case) runs
in a fresh subprocess pinned to --threads CPUs, with model_speed.py's runners (same cases, inputs,
loss and Adam step) and its interleaved timer: every impl is compiled once, then the impls run in
rotating order, so background load hits all alike. Prints medians, minima, and each impl's output
(forward) or loss (train, after equal steps) relative to the first impl's.
"""

import os
import statistics
import sys

from absl import app
from absl import flags

import model_speed  # beside this script: bench/ is sys.path[0] when it runs

# --variants, --threads, --reps and --worker are model_speed.py's flags (imported above).
_IMPLS = flags.DEFINE_list('impls', ['xla', 'auto'], 'xla, or CPU-layer forms (auto, native, matmul, winograd), optionally +eigen/+ynn.')
_AB_CASES = flags.DEFINE_list('ab_cases', ['fwd256', 'train_b2_128'],
                              'Non-tiled model_speed.py cases: fwd256, fwd_b4_256, train_b2_128.')
_EIGEN_SUFFIX = {'': None, 'eigen': True, 'ynn': False}


def worker(spec):
  """Times every impl of one (variant, case); returns one row per impl."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hinet_jax import models  # pylint: disable=g-import-not-at-top
  from hinet_jax.cpu import layers as cpu_layers  # pylint: disable=g-import-not-at-top

  preset = model_speed.VARIANT_PRESETS[spec['variant']]
  inputs = model_speed.make_inputs(spec['case'])
  params = jax.tree.map(np.asarray, models.init_params(models.create_model(preset), 0))
  runners = {}
  for impl in spec['impls']:
    conv_impl, _, suffix = impl.partition('+')
    backend, layers = ('xla', None) if conv_impl == 'xla' else ('auto', cpu_layers.layers(conv_impl))
    runners[impl] = model_speed.JaxRunner(preset, spec['case'], params, 'float32', inputs,
                                          backend=backend, layers=layers,
                                          eigen_convs=_EIGEN_SUFFIX[suffix])
  times = model_speed.time_interleaved(runners, spec['reps'])
  ref = np.asarray(runners[spec['impls'][0]].out)
  rows = []
  for impl, t in times.items():
    out = np.asarray(runners[impl].out)
    rel = float(np.linalg.norm((out - ref).ravel()) / (np.linalg.norm(ref.ravel()) + 1e-30))
    rows.append(dict(impl=impl, median_ms=1e3 * statistics.median(t['times_s']),
                     min_ms=1e3 * min(t['times_s']), rel_diff=rel))
  return rows


def main(argv):
  del argv
  if model_speed.serve_as_worker(worker):
    return
  for impl in _IMPLS.value:
    if impl.partition('+')[2] not in _EIGEN_SUFFIX:
      raise app.UsageError(f'--impls: {impl!r}: the suffix must be +eigen or +ynn.')
  print('| variant | case | impl | median ms | min ms | vs first | rel. diff | load before |')
  print('|---|---|---|---|---|---|---|---|')
  for variant in model_speed._VARIANTS.value:  # pylint: disable=protected-access
    for case in _AB_CASES.value:
      load = os.getloadavg()[0]
      rows = model_speed.spawn(
          dict(variant=variant, case=case, impls=_IMPLS.value,
               threads=model_speed._THREADS.value,  # pylint: disable=protected-access
               reps=model_speed._REPS.value), os.path.dirname(os.path.dirname(os.path.abspath(__file__))), script=__file__)  # pylint: disable=protected-access
      if 'error' in rows[0]:
        sys.exit(f'worker failed for {variant}/{case}.')
      first = rows[0]['median_ms']
      for r in rows:
        print(f"| {variant} | {case} | {r['impl']} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | "
              f"{first / r['median_ms']:.2f}x | {r['rel_diff']:.1e} | {load:.1f} |", flush=True)


if __name__ == '__main__':
  app.run(main)
