"""One HIN block on every backend: an edit to `hinet_jax.models` runs wherever the model runs.

The CPU backend's fused blocks are rewrites of the plain ones, and on one CPU device it is the
default. The subprocess tests run there (one device, as a user's laptop), the first on a copy of
the package whose block a researcher has edited, the second on the package as it is.
"""

import json
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import hinet_jax
from hinet_jax import backends
from hinet_jax import models
from hinet_jax.cpu import kernels
from hinet_jax.cpu import layers as cpu_layers
from hinet_jax.cpu import model_check

import data_fixtures
import launch

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY = dict(wf=16, depth=3, hin_position_left=0, hin_position_right=1)
# A few steps of the tiny config, validated and saved at the end.
SHORT_RUN = ('--config.num_train_steps=3', '--config.eval_every_steps=3',
             '--config.checkpoint_every_steps=3', '--config.log_every_steps=1',
             '--config.eval.num_panels=0')
# The edit: group norm over all channels where HINet has half instance norm.
HIN_LINE = "      out = self.norm(param_dtype=self.param_dtype, name='norm')(out)\n"
GROUP_NORM_LINE = ("      out = nn.GroupNorm(num_groups=4, epsilon=1e-5, param_dtype=self.param_dtype,"
                   " name='norm')(out)\n")


class GroupNorm(nn.Module):
  """A norm a researcher might swap in: group norm over all channels."""

  param_dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.GroupNorm(num_groups=4, epsilon=1e-5, param_dtype=self.param_dtype)(x)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_a_swapped_norm_runs_in_the_fused_blocks():
  """A norm given as a part is kept by the CPU backend's blocks: same parameters, same outputs."""
  plain = models.create_model(**TINY).clone(layers=models.Layers(norm=GroupNorm))
  assert model_check.why_not_supported(plain) is None
  fused = plain.clone(layers=cpu_layers.layers_for(plain.layers))
  assert fused.layers.norm is GroupNorm and fused.layers.block is cpu_layers.FusedConvBlock
  params = models.init_params(plain, 0)
  assert params['down_path_1_0']['norm']['GroupNorm_0']['scale'].shape == (16,)  # all channels
  x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3))
  want, got = [jax.jit(m.apply)({'params': params}, x)[1] for m in (plain, fused)]
  assert _rel(got, want) < 1e-5
  # XLA's backend keeps it too, from the plain model or from the fused one.
  for model in (plain, fused):
    assert backends.resolve('xla').build(model).layers == plain.layers


def test_models_the_cpu_backend_does_not_compute_are_declined_with_the_reason():
  model = models.create_model(**TINY)
  assert model_check.why_not_supported(model) is None
  assert 'float32' in model_check.why_not_supported(model.clone(dtype=jnp.bfloat16))

  class MyBlock(models.ConvBlock):
    pass

  assert 'layers' in model_check.why_not_supported(
      model.clone(layers=models.Layers(block=MyBlock)))


def _env(**extra):
  """One CPU device: the default backend is then the CPU one."""
  return launch.program_env(1, **extra)


def _run(args, cwd=REPO, **env):
  """Runs `python *args`; returns its (stdout, stderr)."""
  proc = subprocess.run([sys.executable, *args], env=_env(**env), cwd=cwd, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, f'{args} failed:\n{proc.stderr[-5000:]}'
  return proc.stdout, proc.stderr


# Run where the edited copy is imported, in one process (one start-up): train.py's program on
# the tiny config, then the model of the workdir loaded on both backends.
_TRAIN_THEN_LOAD = """
import json, sys
import numpy as np
workdir, overrides = sys.argv[1], sys.argv[2:]
sys.argv = ['train.py', '--config=configs/tiny.py', f'--workdir={workdir}', *overrides]
from hinet_jax.cli import train
try:
  train.run()
except SystemExit as e:
  if e.code:
    raise
import jax
import hinet_jax
x = np.random.default_rng(0).uniform(size=(1, 48, 40, 3)).astype(np.float32)
out = {}
for backend in ('auto', 'xla'):
  model, params = hinet_jax.load_pretrained(workdir, backend=backend)
  out[backend] = np.asarray(jax.jit(model.apply)({'params': params}, x)[1])
  out[backend + '_block'] = model.layers.block.__name__
norm = params['down_path_1_0']['norm']
print(json.dumps(dict(
    module=hinet_jax.__file__, auto_block=out['auto_block'], xla_block=out['xla_block'],
    norm_params={k: list(v.shape) for k, v in norm.items()},
    rel=float(np.linalg.norm(out['auto'] - out['xla']) / np.linalg.norm(out['xla'])))))
"""


@pytest.mark.skipif(not kernels.available(), reason='no C++ compiler: the default is XLA anyway')
def test_an_edited_block_runs_on_the_default_backend(tmp_path):
  """A researcher swaps the half instance norm for a group norm in `models/hinet.py`: on one CPU
  device the default backend trains and loads the edited block (on XLA's layers, said once in
  the log), and computes what the XLA backend computes."""
  copy = tmp_path / 'src'  # The working directory: Python imports the copy first.
  shutil.copytree(REPO / 'hinet_jax', copy / 'hinet_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  source = copy / 'hinet_jax' / 'models' / 'hinet.py'
  text = source.read_text()
  assert text.count(HIN_LINE) == 1
  source.write_text(text.replace(HIN_LINE, GROUP_NORM_LINE))
  workdir = tmp_path / 'run'
  stdout, log = _run(['-c', _TRAIN_THEN_LOAD, str(workdir), *SHORT_RUN], cwd=copy)
  # Trained on XLA's layers, said once; the step and validation compiled for them only.
  assert 'backend xla' in log, log[-3000:]
  declined = [line for line in log.splitlines() if 'CPU backend does not compute' in line]
  assert len(declined) == 1 and 'encoder block' in declined[0], log[-3000:]
  result = json.loads(stdout.splitlines()[-1])
  assert result['module'].startswith(str(copy))
  assert result['auto_block'] == result['xla_block'] == 'ConvBlock'
  # Group norm's affine covers all 8 channels of level 0 (half instance norm's, 4).
  assert result['norm_params'] == {'bias': [8], 'scale': [8]}
  assert result['rel'] < 1e-6


# train.py's program, then eval.py's restoring one photo, in one process (one start-up).
_TRAIN_THEN_RESTORE = """
import sys
workdir, photo, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
from hinet_jax.cli import eval as eval_program
from hinet_jax.cli import train
for program, argv in (
    (train, ['train.py', '--config=configs/tiny.py', f'--workdir={workdir}', *overrides]),
    (eval_program, ['eval.py', f'--checkpoint={workdir}', f'--input={photo}', f'--output={out}',
                    '--tile=0'])):
  sys.argv = argv
  try:
    program.run()
  except SystemExit as e:
    if e.code:
      raise
"""


@pytest.mark.skipif(not kernels.available(), reason='no C++ compiler for the kernels')
def test_the_cpu_backend_trains_and_evaluates(tmp_path):
  """The default backend on one CPU device (the C++ kernels) through the train loop, its
  validation, and eval.py; what it trains restores the same on XLA's layers."""
  workdir, out = tmp_path / 'run', tmp_path / 'out'
  photo = tmp_path / 'photo.png'
  noisy = np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8)
  Image.fromarray(noisy).save(photo)
  _, log = _run(['-c', _TRAIN_THEN_RESTORE, str(workdir), str(photo), str(out), *SHORT_RUN])
  assert log.count('backend cpu') == 2, log[-3000:]  # the train loop's line and eval.py's
  metrics = json.loads((workdir / 'final_metrics.json').read_text())
  assert metrics['step'] == 3 and np.isfinite(metrics['psnr']), metrics
  restored = np.asarray(Image.open(out / 'photo.png')).astype(int)
  assert restored.shape == (40, 56, 3)
  # The same function on XLA's layers (here, in-process): 8-bit outputs differ at most where
  # rounding flips.
  model, params = hinet_jax.load_pretrained(str(workdir), backend='xla')
  reference = data_fixtures.restored(model, params, noisy[None].astype(np.float32) / 255)[0]
  reference = np.round(np.clip(np.asarray(reference), 0, 1) * 255).astype(int)
  assert np.abs(restored - reference).max() <= 1
