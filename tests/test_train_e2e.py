"""train.py end to end in subprocesses: resume after SIGTERM and a partial save, multi-process
(2 processes match 1).

Each run is a separate `python train.py` with its own XLA device count, as a user would launch it.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl.testing import absltest
import jax
import numpy as np
from PIL import Image

from hinet_jax import checkpoints

import launch


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240


def _env(num_devices=2):
  """A training subprocess's environment, `num_devices` CPU devices (shares the suite's
  compilation cache and compile flags: conftest.py, launch.py)."""
  return launch.program_env(num_devices)


# The tiny config, 40 steps, checkpoints every 10, validated only at the end.
_RESUME_RUN = ('--config.num_train_steps=40', '--config.eval_every_steps=1000')


def _train_cmd(workdir, config='configs/tiny.py', *overrides):
  return [sys.executable, os.path.join(REPO, 'train.py'), f'--config={REPO}/{config}',
          f'--workdir={workdir}', *overrides]


def _resume_cmd(workdir):
  return _train_cmd(workdir, 'configs/tiny.py', *_RESUME_RUN)


def _run(cmd, env=None):
  proc = subprocess.run(cmd, env=env or _env(), cwd=REPO, capture_output=True, text=True,
                        timeout=TIMEOUT, check=False)
  if proc.returncode:
    raise AssertionError(f'{cmd} failed ({proc.returncode}):\n{proc.stderr[-5000:]}')
  return proc.stderr


def _steps(workdir):
  d = checkpoints.checkpoint_dir(workdir)
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait_for_checkpoint(proc, workdir, min_step):
  """Polls until a complete checkpoint >= min_step exists; fails if the process ended first."""
  deadline = time.time() + TIMEOUT
  while time.time() < deadline:
    if any(s >= min_step for s in _steps(workdir)):
      return
    if proc.poll() is not None:
      raise AssertionError(f'Training ended before checkpoint {min_step}:\n'
                           f'{proc.stderr.read()[-5000:]}')
    time.sleep(0.02)
  raise AssertionError(f'No checkpoint >= {min_step} within {TIMEOUT}s.')


def _params(workdir):
  _, params = checkpoints.load_params_from_workdir(workdir)
  return jax.tree.map(np.asarray, params)


class ResumeTest(absltest.TestCase):
  """One workdir is SIGTERMed, left with a partial save, then finished."""

  def test_interrupted_runs_resume_to_the_uninterrupted_result(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    ref, work = os.path.join(tmp.name, 'ref'), os.path.join(tmp.name, 'work')
    # The uninterrupted reference runs beside the first interrupted run (one start-up, not two).
    reference = subprocess.Popen(_resume_cmd(ref), env=_env(), cwd=REPO, stderr=subprocess.PIPE,
                                 text=True)

    # 1. SIGTERM: clean exit with a checkpoint at the step reached.
    proc = subprocess.Popen(_resume_cmd(work), env=_env(), cwd=REPO, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_checkpoint(proc, work, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    self.assertEqual(proc.returncode, 0, err[-3000:])
    stopped = int(re.search(r'Stopped by SIGTERM at step (\d+)', err).group(1))
    self.assertLess(stopped, 40)
    self.assertEqual(_steps(work)[-1], stopped)

    _, err = reference.communicate(timeout=TIMEOUT)
    self.assertEqual(reference.returncode, 0, err[-3000:])
    with open(os.path.join(ref, 'final_metrics.json')) as f:
      final = json.load(f)
    for key in ('psnr', 'ssim', 'input_psnr', 'input_ssim', 'num_images'):
      self.assertIn(key, final)
    self.assertGreater(final['psnr'], final['input_psnr'])

    self.assertFalse(os.path.exists(os.path.join(work, 'final_metrics.json')))

    # 2. What a SIGKILL during a save leaves: an uncommitted step directory. (A real SIGKILL
    # mid-run, resumed from its last committed step: tests/test_object_store.py, in a bucket.)
    partial = os.path.join(checkpoints.checkpoint_dir(work),
                           f'{stopped + 1}.orbax-checkpoint-tmp-1')
    os.makedirs(os.path.join(partial, 'state'))

    # 3. Resume to the end: exactly the uninterrupted parameters.
    err = _run(_resume_cmd(work))
    self.assertIn(f'Resumed from step {stopped}', err)
    self.assertFalse(os.path.exists(partial))
    jax.tree.map(np.testing.assert_array_equal, _params(ref), _params(work))
    # A rerun of a finished run: tests/test_train_loop.py (in-process).


def _write_pairs(root, n=8, size=32, seed=0):
  """n distinct random image pairs in root/{input,target}."""
  rng = np.random.default_rng(seed)
  for sub in ('input', 'target'):
    os.makedirs(os.path.join(root, sub))
  for i in range(n):
    gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    lq = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)
    Image.fromarray(lq).save(os.path.join(root, 'input', f'{i}.png'))
    Image.fromarray(gt).save(os.path.join(root, 'target', f'{i}.png'))


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class MultiProcessTest(absltest.TestCase):

  def test_two_processes_match_one_process(self):
    # One device per process: two processes of one device each against one process of two (the
    # fewest partitions that still split the batch across processes).
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    data = os.path.join(tmp.name, 'data')
    _write_pairs(data)
    # The global batch is the whole 8-image set every step (no augmentation, full-size crops),
    # so the per-process data sharding changes only the order of the rows, not the gradient.
    overrides = ['--config.tensorboard=false', f'--config.data.train_dir={data}', f'--config.data.val_dir={data}',
                 '--config.batch_size=8', '--config.data.crop_size=32',
                 '--config.data.augment=none', '--config.num_train_steps=6',
                 '--config.log_every_steps=3', '--config.eval_every_steps=100',
                 '--config.checkpoint_every_steps=3', '--config.model.wf=8',
                 '--config.model.depth=2', '--config.model.hin_position_right=1',
                 '--config.optim.grad_clip_norm=1.0', '--config.optim.learning_rate=1e-3',
                 # A large Adam eps keeps updates proportional to the gradients: with the default
                 # 1e-8 a near-zero gradient's sign (float reduction order) moves a weight by lr.
                 '--config.optim.eps=1e-3',
                 '--config.data.eval_batch_size=4', '--config.eval.num_panels=1',
                 '--config.data.prefetch=2']
    one, two = os.path.join(tmp.name, 'one'), os.path.join(tmp.name, 'two')
    port = _free_port()
    procs = [subprocess.Popen(
        _train_cmd(two, 'configs/custom.py', *overrides, f'--coordinator_address=localhost:{port}',
                   '--num_processes=2', f'--process_id={i}'),
        env=_env(1), cwd=REPO, stderr=subprocess.PIPE, text=True) for i in range(2)]
    _run(_train_cmd(one, 'configs/custom.py', *overrides), env=_env(2))
    for i, proc in enumerate(procs):
      _, err = proc.communicate(timeout=TIMEOUT)
      self.assertEqual(proc.returncode, 0, f'process {i}:\n{err[-5000:]}')
      self.assertIn('2 process(es), 2 device(s)', err)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 _params(one), _params(two))
    with open(os.path.join(one, 'final_metrics.json')) as f1, \
        open(os.path.join(two, 'final_metrics.json')) as f2:
      m1, m2 = json.load(f1), json.load(f2)
    self.assertAlmostEqual(m1['psnr'], m2['psnr'], places=3)
    self.assertEqual(m1['num_images'], m2['num_images'])

    # Resume with another process count and a preemption that stops all processes at one step:
    # tests/test_object_store.py (the pod recipe, in a bucket).


if __name__ == '__main__':
  absltest.main()
