r"""Model speed: JAX HINet against the PyTorch reference, same weights, same threads.

  python bench/model_speed.py --json=/tmp/model_speed.json             # CPU default cases
  python bench/model_speed.py --variants=0.5x --cases=fwd256,train_b2_128 --reps=5
  python bench/model_speed.py --cases=all --torch_compile                 # everything (slow on CPU)

Cases (each for every variant in --variants):
  fwd256        forward, batch 1, 256x256 (stage-2 output only).
  tiled720      one 1280x720 frame through `inference.restore_image(tile=256, batch_size=4)`; the
                PyTorch side runs the same tiles in the same batches and merges them the same way.
  train_b2_128  full train step (forward, backward, Adam update; PSNR loss, weight 0.5, on both
                stages), batch 2 of 128x128: the CPU-sized case.
  train_b8_256  the same at batch 8 of 256x256 (the HINet recipe's per-GPU batch).

Method:
  * Every (variant, case, framework) runs in a fresh subprocess pinned to --threads CPUs
    (`os.sched_setaffinity` before JAX/torch import: XLA sizes its intra-op pool from the affinity
    mask, and torch gets `set_num_threads(threads)` and one inter-op thread; BLAS env vars are set to
    the same count). Times are medians of --reps warm runs (after one compile/warm-up run).
    With --noisolate the frameworks of a (variant, case) share one process and run interleaved,
    alternating which goes first: fairer under background load, but each one's idle worker
    threads then slow the other (bench/README.md), so the default is one process each.
  * Every worker first calls `host_memory.keep_freed_memory()` (glibc malloc keeps freed memory,
    as train.py and eval.py do), JAX and PyTorch alike; --nokeep_freed_memory leaves malloc alone.
  * The PyTorch weights are `torch_reference.random_state_dict`; JAX gets them through
    `torch_port.torch_to_flax`, and the outputs are compared (max abs diff is reported).
  * Peak memory: one more subprocess per (variant, case, framework) that imports only that
    framework, runs warm-up + one rep and reports `ru_maxrss` (peak) and the RSS before the first
    run (baseline: interpreter, libraries, params).
  * Ceiling: a float32 NxN matmul with jnp, numpy and torch in the same pinned subprocess setup;
    every case reports achieved GFLOP/s = flops / median time and its fraction of the jnp ceiling.
    Forward flops = 2 * `models.forward_macs` (XLA cost analysis of what runs); a train step counts
    3x the forward.
  * On a GPU (jax backend 'gpu'): JAX also runs the bfloat16 compute model
    (`create_model(preset, dtype='bfloat16')`) as `jax_bf16`, PyTorch (on CUDA, with
    `cudnn.benchmark` as BasicSR trains) also runs under bf16 `torch.autocast` as `torch_bf16`; the
    ceiling adds 8192^3 bf16 and float32 matmuls on random data, and the table shows MFU against
    the measured jnp bf16 rate. Device memory (`device_MB`): XLA's memory analysis of the timed
    executable for JAX (arguments + outputs + temporaries - donated), the CUDA allocator's peak
    around the warm-up run for PyTorch (which includes cuDNN's benchmark workspaces). Use
    --noisolate --nomemory there (bench/gpu_session.sh does): one process per case saves compiles.
  * PyTorch's other forms, by name in --frameworks: `torch_cl` (channels_last tensors: no
    NCHW<->NHWC transposes around cuDNN/oneDNN), `torch_compile`, `_bf16` (autocast), combined as
    torch[_cl][_compile][_bf16]; `jax_bf16` alone times JAX's bf16 model without its float32 one.
    --ceiling_n=0 skips the ceiling (no MFU column) where a run only compares settings.

Results, the machine and the levers log are in bench/README.md.
"""

import functools
import importlib.util
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_VARIANTS = flags.DEFINE_list('variants', ['1x', '0.5x'], 'Variants: 1x (wf 64), 0.5x (wf 32).')
_CASES = flags.DEFINE_list('cases', ['fwd256', 'tiled720', 'train_b2_128'],
                           'Cases (see the module doc) or "all".')
_FRAMEWORKS = flags.DEFINE_list(
    'frameworks', ['jax', 'torch'],
    'jax (on GPU also jax_bf16), jax_bf16 alone, jax_low_memory (`Predictor(low_memory=True)`), '
    'torch (eager; on GPU also torch_bf16), and '
    'torch[_cl][_compile][_bf16]: channels_last, torch.compile, bf16 autocast.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', False, 'Also time torch.compile (slow compile).')
_THREADS = flags.DEFINE_integer('threads', 2, 'CPU threads for both frameworks.')
_REPS = flags.DEFINE_integer('reps', 5, 'Timed repetitions per case (median reported).')
_MEMORY = flags.DEFINE_bool('memory', True, 'Measure peak RSS in separate subprocesses.')
_CEILING_N = flags.DEFINE_integer('ceiling_n', 4096,
                                  'Matmul side for the ceiling; 0 skips the ceiling.')
_JSON = flags.DEFINE_string('json', None, 'Also write all results as JSON to this path.')
_ISOLATE = flags.DEFINE_bool(
    'isolate', True, 'Time each framework in its own process (default). --noisolate interleaves '
    'them in one process, which evens out background load but lets one framework\'s idle '
    'worker threads slow the other (JAX 7-20%, torch 4-7% slower here).')
_KEEP_FREED_MEMORY = flags.DEFINE_bool(
    'keep_freed_memory', True,
    'Every worker (JAX and PyTorch alike) first calls `host_memory.keep_freed_memory()`, as '
    'train.py and eval.py do: glibc malloc keeps freed memory instead of page-faulting fresh '
    'buffers on every step.')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir', None, 'After timing, profile two more runs of every runner into this folder: '
    'JAX as a profiler trace (jax.profiler, perfetto JSON), PyTorch as torch.profiler\'s '
    'per-op table (text).')
_BASELINE = flags.DEFINE_string(
    'baseline', None, 'A checkout of another commit (e.g. `git worktree add /tmp/base REV`): its '
    'own bench/model_speed.py also times JAX there, as framework `jax@base`, in the same run.')
_WORKER = flags.DEFINE_string('worker', None, 'Internal: run one job (JSON spec) and print it.')

JAX_FRAMEWORKS = ('jax', 'jax_bf16', 'jax_low_memory')
ALL_CASES = ('fwd256', 'tiled720', 'train_b2_128', 'train_b8_256')
VARIANT_PRESETS = {'1x': 'sidd-1x', '0.5x': 'sidd-0.5x'}
TILE, TILE_BATCH, FRAME_HW = 256, 4, (720, 1280)
RESULT_PREFIX = 'RESULT '
TORCH_FRAMEWORK = re.compile(r'^torch(_cl)?(_compile)?(_bf16)?$')


def torch_options(framework):
  """'torch[_cl][_compile][_bf16]' -> TorchRunner's keyword arguments."""
  cl, compiled, bf16 = TORCH_FRAMEWORK.match(framework).groups()
  return dict(channels_last=bool(cl), compiled=bool(compiled), autocast_bf16=bool(bf16))


# ----------------------------------------------------------------------------
# Worker side: everything below runs inside a pinned subprocess.


def pin_threads(threads):
  """Restricts this process to `threads` CPUs and tells the BLAS/OpenMP pools the same.

  Must run before numpy, JAX or torch is imported.

  Args:
    threads: number of CPUs.
  """
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cpus)
  for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    os.environ[var] = str(threads)
  if threads == 1:  # XLA's intra-op pool would still have 1 thread; make it explicit.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_cpu_multi_thread_eigen=false').strip()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # On a GPU, JAX would preallocate 75% of its memory and leave PyTorch (same process under
  # --noisolate, for the parity check otherwise) too little for the 1x batch-8 train step.
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.45')


def setup_malloc(spec):
  """`host_memory.keep_freed_memory()` for every framework when the spec asks (before any runs)."""
  if spec['keep_freed_memory']:
    from hinet_jax.cpu import host_memory  # pylint: disable=g-import-not-at-top
    host_memory.keep_freed_memory(only_on_cpu=False)


def rss_mb():
  """Current resident set size in MiB (Linux /proc)."""
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def peak_rss_mb():
  """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_torch_reference():
  """The PyTorch HINet of the parity tests (`tests/torch_reference.py`), loaded from its file."""
  spec = importlib.util.spec_from_file_location(
      'torch_reference', os.path.join(_ROOT, 'tests', 'torch_reference.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def case_shape(case):
  """(batch, height, width, is_train) of a non-tiled case."""
  return {'fwd256': (1, 256, 256, False), 'fwd_b4_256': (4, 256, 256, False),
          'train_b2_128': (2, 128, 128, True),
          'train_b8_256': (8, 256, 256, True)}[case]


PSNR_SCALE = 10.0 / 2.302585092994046  # 10 / ln(10)


def psnr_loss_jax(pred, target, weight=0.5):
  """The official PSNR loss (BasicSR's PSNRLoss) in jnp, NHWC.

  weight * 10/ln(10) * mean_n(ln(mean_hwc((pred - target)^2) + 1e-8)).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  mse = jnp.mean(jnp.square(pred - target), axis=(1, 2, 3))
  return weight * PSNR_SCALE * jnp.mean(jnp.log(mse + 1e-8))


def psnr_loss_torch(pred, target, weight=0.5):
  """`psnr_loss_jax` for NCHW torch tensors."""
  mse = ((pred - target)**2).mean(dim=(1, 2, 3))
  return weight * PSNR_SCALE * (mse + 1e-8).log().mean()


class JaxRunner:
  """Compiled JAX callables for one case; `run()` executes once and blocks.

  The model runs on `backend` ('auto': as the library picks); `layers` replaces its layers
  (bench/conv_impl_ab.py). `eigen_convs` None runs as the library does (forward and tiles through
  `hinet_jax.Predictor`, which holds the prepared weights alone; the train step without options),
  True or False forces XLA's own / YNNPACK's convolutions on every executable, nothing prepared.
  The runner keeps no reference to `params_np`.
  """

  def __init__(self, preset, case, params_np, dtype, inputs, backend='auto', layers=None,
               eigen_convs=None, low_memory=False):
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    import hinet_jax  # pylint: disable=g-import-not-at-top
    from hinet_jax.cpu import convolution  # pylint: disable=g-import-not-at-top

    self.jax = jax
    self.model = hinet_jax.create_model(preset, dtype=dtype, backend=backend)
    if layers is not None:
      self.model = self.model.clone(layers=layers)
    if eigen_convs is None:
      fwd_options, train_options = convolution.inference_compiler_options(), None
    else:
      fwd_options = train_options = (convolution.inference_compiler_options() if eigen_convs
                                     else None)
    self.case = case
    self.out = None
    self.lower = None  # () -> jax.stages.Lowered of the timed executable (device memory).
    if case == 'tiled720':  # As the library runs.
      predictor = hinet_jax.Predictor(self.model, params_np, backend=backend, tile=TILE,
                                      batch_size=TILE_BATCH, low_memory=low_memory)
      self.frame = inputs['frame']
      self.run = lambda: self._set(predictor(self.frame))
      return
    _, _, _, train = case_shape(case)
    self.x = jax.device_put(inputs['x'])
    if not train:
      fwd = jax.jit(lambda p, x: self.model.apply({'params': p}, x)[1],
                    compiler_options=fwd_options)
      if eigen_convs is None:  # The library's inference path, kernels packed once.
        predictor = hinet_jax.Predictor(self.model, params_np, backend=backend,
                                        low_memory=low_memory)
        self.run = lambda: self._set(predictor.predict(self.x).block_until_ready())
        # The same program where nothing is packed (GPU: device memory).
        self.lower = lambda: fwd.lower(predictor.variables['params'], self.x)
      else:
        params = jax.device_put(params_np)
        self.run = lambda: self._set(fwd(params, self.x).block_until_ready())
        self.lower = lambda: fwd.lower(params, self.x)
      return
    self.params = jax.device_put(params_np)
    self.y = jax.device_put(inputs['y'])
    tx = optax.adam(1e-4)
    try:  # The library's loss once it exists (the training loop is being written beside this).
      from hinet_jax.train import losses  # pylint: disable=g-import-not-at-top
      loss_of = lambda outs, y: losses.multi_stage_loss(outs, y, name='psnr', weight=0.5)[0]
    except (ImportError, AttributeError):
      loss_of = lambda outs, y: sum(psnr_loss_jax(o, y) for o in outs)

    def step(params, opt_state, x, y):
      loss, grads = jax.value_and_grad(
          lambda p: loss_of(self.model.apply({'params': p}, x), y))(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    # Donating params and optimizer state lets XLA update them in place (no second copy).
    self.step = jax.jit(step, donate_argnums=(0, 1), compiler_options=train_options)
    self.opt_state = tx.init(self.params)

    def run_step():
      self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.x, self.y)
      self._set(float(loss))

    self.run = run_step
    self.lower = lambda: self.step.lower(self.params, self.opt_state, self.x, self.y)

  def _set(self, out):
    self.out = out

  def reset_device_peak(self):
    pass

  def device_peak_mb(self):
    """Accelerator memory the executable needs (XLA's memory analysis: arguments + outputs +
    temporaries - donated aliases); None on CPU, where peak RSS is measured instead."""
    if self.jax.default_backend() == 'cpu' or self.lower is None:
      return None
    try:
      m = self.lower().compile().memory_analysis()
      return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes -
              m.alias_size_in_bytes) / 2**20
    except Exception:  # pylint: disable=broad-except
      return None  # Not every backend/version reports it; the timing does not depend on it.


class TorchRunner:
  """The PyTorch reference for one case (eager or torch.compile); `run()` executes and syncs."""

  def __init__(self, net, case, inputs, device, compiled=False, autocast_bf16=False,
               channels_last=False):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    from hinet_jax.evaluation import inference  # pylint: disable=g-import-not-at-top

    self.torch = torch
    # channels_last: NHWC tensors, so cuDNN/oneDNN convolve without NCHW<->NHWC transposes.
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.net = net.to(device, memory_format=memory_format)
    fn = torch.compile(self.net) if compiled else self.net
    self.device = device
    self.out = None
    if autocast_bf16:  # PyTorch's mixed precision: bf16 convs, float32 weights and reductions.
      def autocast_fn(x):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
          return [o.float() for o in fn(x)]
      self.fn = autocast_fn
    else:
      self.fn = fn
    sync = (lambda: torch.cuda.synchronize()) if device == 'cuda' else (lambda: None)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(
        device, memory_format=memory_format)
    if case == 'tiled720':
      frame = inputs['frame']

      def run_tiled():
        # The same grid, batches (last one padded) and merge as inference.restore_image.
        coords = inference.tile_coords(frame.shape[0], frame.shape[1], TILE, 0)
        tiles = inference.extract_tiles(frame, coords, TILE)
        pad = (-len(tiles)) % TILE_BATCH
        tiles = np.concatenate([tiles, np.repeat(tiles[-1:], pad, axis=0)])
        outs = []
        with torch.no_grad():
          for s in range(0, len(tiles), TILE_BATCH):
            outs.append(self.fn(to_t(tiles[s:s + TILE_BATCH]))[1].cpu().numpy())
        outs = np.concatenate(outs).transpose(0, 2, 3, 1)[:len(coords)]
        self.out = inference.merge_tiles(outs, coords, frame.shape[:2])

      self.run = run_tiled
      return
    _, _, _, train = case_shape(case)
    self.x = to_t(inputs['x'])
    if not train:
      self.net.eval()

      def run_fwd():
        with torch.no_grad():
          self.out = self.fn(self.x)[1]
        sync()

      self.run = run_fwd
      return
    self.y = to_t(inputs['y'])
    self.net.train()  # No dropout/batch norm in HINet: train() == eval() numerically.
    opt = torch.optim.Adam(self.net.parameters(), lr=1e-4)

    def run_step():
      opt.zero_grad(set_to_none=True)
      loss = sum(psnr_loss_torch(o, self.y) for o in self.fn(self.x))
      loss.backward()
      opt.step()
      self.out = float(loss)
      sync()

    self.run = run_step

  def reset_device_peak(self):
    if self.device == 'cuda':
      self.torch.cuda.reset_peak_memory_stats()

  def device_peak_mb(self):
    """The CUDA caching allocator's peak since `reset_device_peak` (None on CPU)."""
    if self.device != 'cuda':
      return None
    return self.torch.cuda.max_memory_allocated() / 2**20


def make_inputs(case, seed=0):
  """Deterministic inputs of a case: {'x','y'} NHWC float32, or {'frame'} HWC for tiled720."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  if case == 'tiled720':
    return {'frame': rng.random(FRAME_HW + (3,), np.float32)}
  b, h, w, _ = case_shape(case)
  y = rng.random((b, h, w, 3), np.float32)
  x = np.clip(y + rng.normal(0, 0.1, y.shape), 0, 1).astype(np.float32)
  return {'x': x, 'y': y}


@functools.lru_cache(maxsize=None)
def case_flops(preset, case):
  """Flops one run of `case` executes (forward 2*MACs; train 3x forward; tiles incl. padding).

  Counted on the CPU backend whatever the default one is: the same count on every machine, and no
  accelerator compile (with autotuning) just to count.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from hinet_jax import models  # pylint: disable=g-import-not-at-top

  model = models.create_model(preset)
  with jax.default_device(jax.devices('cpu')[0]):
    if case == 'tiled720':
      from hinet_jax.evaluation import inference  # pylint: disable=g-import-not-at-top
      n_tiles = len(inference.tile_coords(FRAME_HW[0], FRAME_HW[1], TILE, 0))
      calls = -(-n_tiles // TILE_BATCH)
      return 2 * models.forward_macs(model, TILE, TILE, TILE_BATCH) * calls
    b, h, w, train = case_shape(case)
    fwd = 2 * models.forward_macs(model, h, w, b)
    return 3 * fwd if train else fwd


def median_time(fn, reps):
  """Median seconds of `reps` calls of `fn`, after one untimed warm-up call."""
  fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def time_interleaved(runners, reps):
  """Warms every runner once, then times `reps` rounds, rotating the order each round.

  Args:
    runners: {name: runner with .run()}.
    reps: timed rounds.

  Returns:
    {name: {'first_s': compile+first run, 'times_s': [...], 'device_peak_mb': see the runners}}.
  """
  out = {}
  for name, r in runners.items():
    r.reset_device_peak()
    t0 = time.perf_counter()
    r.run()
    out[name] = {'first_s': time.perf_counter() - t0, 'times_s': [],
                 'device_peak_mb': r.device_peak_mb()}
  names = list(runners)
  for i in range(reps):
    order = names[i % len(names):] + names[:i % len(names)]
    for name in order:
      t0 = time.perf_counter()
      runners[name].run()
      out[name]['times_s'].append(time.perf_counter() - t0)
  return out


def worker_timing(spec):
  """One (variant, case): JAX (f32, and bf16 on GPU) and torch, interleaved. Returns rows."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from hinet_jax import models  # pylint: disable=g-import-not-at-top
  from hinet_jax.interop import torch_port  # pylint: disable=g-import-not-at-top
  torch_reference = load_torch_reference()

  torch.set_num_threads(spec['threads'])
  try:
    torch.set_num_interop_threads(1)
  except RuntimeError:
    pass
  preset, case = VARIANT_PRESETS[spec['variant']], spec['case']
  on_gpu = jax.default_backend() == 'gpu'
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  frameworks = list(spec['frameworks'])
  if device == 'cuda':
    torch.backends.cudnn.benchmark = True  # As BasicSR trains HINet: cuDNN picks by timing.
    # PyTorch's own mixed precision beside JAX's bf16, wherever float32 PyTorch is timed (not in
    # a JAX process that builds PyTorch only for the parity check).
    if 'torch' in spec.get('timed', frameworks) and 'torch_bf16' not in frameworks:
      frameworks.append('torch_bf16')
  inputs = make_inputs(case)
  runners = {}
  state_dict = None
  for fw in frameworks:
    if fw.startswith('torch'):
      net, sd = torch_reference.random_state_dict(0, **models.PRESETS[preset])
      state_dict = torch_port.unwrap_state_dict(sd)
      runners[fw] = TorchRunner(net, case, inputs, device, **torch_options(fw))
  if state_dict is None:
    net, sd = torch_reference.random_state_dict(0, **models.PRESETS[preset])
    state_dict = torch_port.unwrap_state_dict(sd)
  dtypes = (['float32'] if 'jax' in frameworks else []) + (
      ['bfloat16'] if 'jax_bf16' in frameworks or ('jax' in frameworks and on_gpu) else [])
  if dtypes:
    params = torch_port.torch_to_flax(state_dict, models.create_model(preset))
    for dtype in dtypes:
      runners['jax' if dtype == 'float32' else 'jax_bf16'] = JaxRunner(
          preset, case, params, dtype, inputs)
  if 'jax_low_memory' in frameworks:
    runners['jax_low_memory'] = JaxRunner(
        preset, case, torch_port.torch_to_flax(state_dict, models.create_model(preset)),
        'float32', inputs, low_memory=True)
  timed = {name: r for name, r in runners.items()
           if name in spec.get('timed', runners) or name in ('jax_bf16', 'torch_bf16')}
  load_before = os.getloadavg()
  res = time_interleaved(timed, spec['reps'])
  load_after = os.getloadavg()
  for name, r in runners.items():
    if name not in timed:  # Untimed: run once, after the timing, for the parity check only.
      r.run()
  if spec.get('profile_dir'):
    for name, r in timed.items():
      profile_runner(r, name, os.path.join(spec['profile_dir'],
                                           f"{spec['variant']}_{case}_{name}"))
  # Parity of the first outputs (forward cases) / first losses (train) as a sanity check.
  ref = runners.get('torch')
  rows = []
  for name, r in res.items():
    dtype = 'bfloat16' if name.endswith('_bf16') else 'float32'
    flops = case_flops(preset, case)
    med = statistics.median(r['times_s'])
    row = dict(variant=spec['variant'], case=case, framework=name, dtype=dtype,
               device=jax.devices()[0].device_kind if name.startswith('jax') else device,
               threads=spec['threads'], reps=spec['reps'], median_s=med, min_s=min(r['times_s']),
               times_s=r['times_s'], first_s=r['first_s'], gflop=flops / 1e9,
               gflops_per_s=flops / med / 1e9, loadavg_before=load_before[0],
               loadavg_after=load_after[0], device_peak_mb=r['device_peak_mb'])
    if ref is not None and name.startswith('jax') and case != 'train_b8_256' and (
        not case.startswith('train') or 'torch' in timed):  # Losses compare after equal steps.
      a, b = runners[name].out, ref.out
      if case.startswith('train'):
        row['note'] = f'last loss jax {a:.4f} torch {b:.4f}'
      else:
        b = b.cpu().numpy().transpose(0, 2, 3, 1) if hasattr(b, 'cpu') else b
        row['max_abs_diff_vs_torch'] = float(np.max(np.abs(np.asarray(a, np.float32) - b)))
    rows.append(row)
  return rows


def profile_runner(runner, name, path, runs=2):
  """Profiles `runs` runs of a warm runner: JAX into the folder `path` (trace), PyTorch into
  `path`.txt (the per-op table sorted by device time). Failures are reported, not raised."""
  try:
    if name.startswith('jax'):
      import jax  # pylint: disable=g-import-not-at-top
      with jax.profiler.trace(path, create_perfetto_trace=True):
        for _ in range(runs):
          runner.run()
      return
    from torch import profiler  # pylint: disable=g-import-not-at-top
    activities = [profiler.ProfilerActivity.CPU]
    if runner.device == 'cuda':
      activities.append(profiler.ProfilerActivity.CUDA)
    with profiler.profile(activities=activities) as prof:
      for _ in range(runs):
        runner.run()
    averages = prof.key_averages()
    try:
      table = averages.table(sort_by='self_device_time_total', row_limit=60)
    except (KeyError, AttributeError, RuntimeError):
      table = averages.table(sort_by='self_cpu_time_total', row_limit=60)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.txt', 'w') as f:
      f.write(table)
  except Exception as e:  # pylint: disable=broad-except
    print(f'profiling {name} into {path} failed: {e!r}', file=sys.stderr)


def worker_memory(spec):
  """Peak RSS of one framework alone on one case (warm-up + one run)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  preset, case, fw = VARIANT_PRESETS[spec['variant']], spec['case'], spec['framework']
  inputs = make_inputs(case)
  if fw.startswith('torch'):
    import torch  # pylint: disable=g-import-not-at-top
    from hinet_jax import models  # pylint: disable=g-import-not-at-top
    torch_reference = load_torch_reference()
    torch.set_num_threads(spec['threads'])
    net, _ = torch_reference.random_state_dict(0, **models.PRESETS[preset])
    runner = TorchRunner(net, case, inputs, 'cuda' if torch.cuda.is_available() else 'cpu',
                         **torch_options(fw))
  else:
    import jax  # pylint: disable=g-import-not-at-top
    from hinet_jax import models  # pylint: disable=g-import-not-at-top
    dtype = 'bfloat16' if fw == 'jax_bf16' else 'float32'
    params = jax.tree.map(np.asarray, models.init_params(models.create_model(preset), 0))
    runner = JaxRunner(preset, case, params, dtype, inputs, low_memory=fw == 'jax_low_memory')
    del params  # As a user who hands the weights to a Predictor.
  base = rss_mb()
  runner.run()
  runner.run()
  return [dict(variant=spec['variant'], case=case, framework=fw, baseline_rss_mb=base,
               peak_rss_mb=peak_rss_mb())]


def worker_ceiling(spec):
  """Large float32 (and on GPU bf16) matmul rates with jnp, numpy and torch, in GFLOP/s."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(spec['threads'])
  n = spec['n']
  flops = 2.0 * n**3
  a = np.random.default_rng(0).random((n, n), np.float32)

  def rate(fn, reps=5):
    return flops / median_time(fn, reps) / 1e9

  out = {'n': n, 'loadavg_before': os.getloadavg()[0]}
  ja = jax.device_put(a)
  mm = jax.jit(jnp.matmul)
  out['jnp_f32_gflops'] = rate(lambda: mm(ja, ja).block_until_ready())
  out['numpy_f32_gflops'] = rate(lambda: a @ a)
  ta = torch.from_numpy(a)
  out['torch_f32_gflops'] = rate(lambda: ta @ ta)
  if jax.default_backend() == 'gpu':
    # The accelerator's matrix rates on random data (zeros run faster than real data), 8192^3.
    m = 8192
    bf_flops = 2.0 * m**3
    jb = jax.random.uniform(jax.random.key(0), (m, m), jnp.float32)
    for name, dtype in (('jnp_bf16_gflops', jnp.bfloat16), ('jnp_f32_gpu_gflops', jnp.float32)):
      jm = jb.astype(dtype)
      out[name] = bf_flops / median_time(lambda: mm(jm, jm).block_until_ready(), 10) / 1e9
    if torch.cuda.is_available():
      tb = torch.rand((m, m), device='cuda', dtype=torch.bfloat16)
      def torch_mm():
        tb @ tb
        torch.cuda.synchronize()
      out['torch_bf16_gflops'] = bf_flops / median_time(torch_mm, 10) / 1e9
  out['device'] = jax.devices()[0].device_kind
  out['backend'] = jax.default_backend()
  return [out]


def serve_as_worker(worker_fn):
  """In a process spawned by `spawn` (--worker set): pins the threads, runs `worker_fn(spec)` and
  prints its rows for the driver. Returns whether this process was a worker."""
  if not _WORKER.value:
    return False
  spec = json.loads(_WORKER.value)
  pin_threads(spec['threads'])
  setup_malloc(spec)
  print(RESULT_PREFIX + json.dumps(worker_fn(spec)), flush=True)
  return True


def run_worker(spec_json):
  spec = json.loads(spec_json)
  pin_threads(spec['threads'])
  setup_malloc(spec)
  kind = spec['kind']
  rows = {'timing': worker_timing, 'memory': worker_memory, 'ceiling': worker_ceiling}[kind](spec)
  print(RESULT_PREFIX + json.dumps(rows), flush=True)


# ----------------------------------------------------------------------------
# Driver side.


def spawn(spec, root=_ROOT, script='model_speed.py'):
  """Runs one job of `root`'s bench/`script` (its --worker) in a fresh subprocess; returns its
  rows or an error. The worker imports `root`'s hinet_jax, whichever copy is installed."""
  spec = dict(spec, keep_freed_memory=spec.get('keep_freed_memory', _KEEP_FREED_MEMORY.value))
  cmd = [sys.executable, os.path.join(root, 'bench', os.path.basename(script)),
         '--worker=' + json.dumps(spec)]
  pythonpath = os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root,
                        env=dict(os.environ, PYTHONPATH=pythonpath), check=False)
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
  print(f'job {spec} failed (rc {proc.returncode}):\n' + '\n'.join(tail), file=sys.stderr)
  return [dict(spec, error='\n'.join(tail[-3:]))]


def format_table(rows, ceiling):
  """Text table of the timing rows (memory merged in), with speed-up vs torch eager."""
  f32 = ceiling.get('jnp_f32_gflops')
  bf16 = ceiling.get('jnp_bf16_gflops')
  eager = {(r['variant'], r['case']): r['median_s'] for r in rows
           if r.get('framework') == 'torch' and 'median_s' in r}
  head = ['variant', 'case', 'framework', 'median_ms', 'min_ms', 'vs_torch', 'GFLOP/s',
          'of_ceiling', 'MFU_bf16', 'peak_MB', 'device_MB', 'load']
  lines = [head]
  for r in rows:
    if 'median_s' not in r:
      lines.append([r.get('variant', ''), r.get('case', ''), r.get('framework', ''), 'ERROR'] +
                   [''] * (len(head) - 4))
      continue
    peak = r.get('peak_rss_mb')
    ceil = bf16 if r['dtype'] == 'bfloat16' and bf16 else f32
    base = eager.get((r['variant'], r['case']))
    lines.append([
        r['variant'], r['case'], r['framework'], f"{1e3 * r['median_s']:.0f}",
        f"{1e3 * r['min_s']:.0f}", f"{base / r['median_s']:.2f}x" if base else '-',
        f"{r['gflops_per_s']:.1f}", f"{r['gflops_per_s'] / ceil:.0%}" if ceil else '-',
        f"{r['gflops_per_s'] / bf16:.1%}" if bf16 else '-',
        f'{peak:.0f}' if peak else '-',
        f"{r['device_peak_mb']:.0f}" if r.get('device_peak_mb') else '-',
        f"{r['loadavg_before']:.1f}/{r['loadavg_after']:.1f}"])
  widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
  return '\n'.join(' '.join(str(c).rjust(w) for c, w in zip(row, widths)) for row in lines)


def main(argv):
  del argv
  if _WORKER.value:
    run_worker(_WORKER.value)
    return
  cases = list(ALL_CASES) if _CASES.value == ['all'] else _CASES.value
  for c in cases:
    if c not in ALL_CASES:
      raise app.UsageError(f'--cases: unknown case {c!r}; choose from {ALL_CASES} or "all".')
  for v in _VARIANTS.value:
    if v not in VARIANT_PRESETS:
      raise app.UsageError(f'--variants: unknown variant {v!r}; choose from '
                           f'{sorted(VARIANT_PRESETS)}.')
  frameworks = list(_FRAMEWORKS.value)
  if _TORCH_COMPILE.value and 'torch_compile' not in frameworks:
    frameworks.append('torch_compile')
  for fw in frameworks:
    if fw not in JAX_FRAMEWORKS and not TORCH_FRAMEWORK.match(fw):
      raise app.UsageError(f'--frameworks: unknown framework {fw!r}; choose from '
                           f'{", ".join(JAX_FRAMEWORKS)}, torch, torch_cl, torch_compile, '
                           'torch_cl_compile (each + _bf16).')
  threads = _THREADS.value
  with open('/proc/loadavg') as f:
    print('loadavg at start:', f.read().strip())
  ceiling = {}
  if _CEILING_N.value:
    ceiling = spawn(dict(kind='ceiling', threads=threads, n=_CEILING_N.value))[0]
    print('ceiling (GFLOP/s):', {k: round(v, 1) if isinstance(v, float) else v
                                 for k, v in ceiling.items()}, flush=True)
  rows = []
  for variant in _VARIANTS.value:
    for case in cases:
      job = dict(kind='timing', variant=variant, case=case, threads=threads, reps=_REPS.value,
                 profile_dir=_PROFILE_DIR.value and os.path.abspath(_PROFILE_DIR.value))
      if not _ISOLATE.value:
        jobs = [dict(job, frameworks=frameworks)]
      else:
        # The JAX process also builds (never times) PyTorch for the output parity check.
        parity = lambda fw: fw in ('jax', 'jax_low_memory') and 'torch' in frameworks and \
            not case.startswith('train')
        jobs = [dict(job, frameworks=[fw, 'torch'] if parity(fw) else [fw], timed=[fw])
                for fw in frameworks]
      roots = [(_ROOT, '')]
      if _BASELINE.value:
        roots.append((os.path.abspath(_BASELINE.value), '@base'))
        jobs.append(dict(job, frameworks=['jax'], timed=['jax'], root_tag='@base'))
      for timing_job in jobs:  # Each job's rows printed as they come (a time limit keeps them).
        tag = timing_job.pop('root_tag', '')
        root = dict((t, r) for r, t in roots)[tag]
        got = spawn(timing_job, root)
        if _MEMORY.value:
          for r in got:
            if 'framework' in r and 'error' not in r:
              mem = spawn(dict(kind='memory', variant=variant, case=case,
                               framework=r['framework'], threads=threads), root)[0]
              r.update({k: v for k, v in mem.items() if k.endswith('_mb')})
        for r in got:
          if 'framework' in r:
            r['framework'] += tag
        for r in got:
          print(json.dumps({k: v for k, v in r.items() if k != 'times_s'}), flush=True)
        rows.extend(got)
  with open('/proc/loadavg') as f:
    print('loadavg at end:', f.read().strip())
  print(format_table(rows, ceiling))
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump({'ceiling': ceiling, 'rows': rows, 'threads': threads,
                 'argv': sys.argv[1:]}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
