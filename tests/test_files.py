"""The file layer's checks that need no object store: bucket names, deadlines, the write probe.

What a real (emulated, denied or stalled) store does is in test_object_store.py.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from hinet_jax import errors
from hinet_jax import files
from hinet_jax.configs import tiny
from hinet_jax.train import loop

import object_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Refuses every connection: a regression that reaches the network fails at once, locally.
_NOWHERE = 'http://127.0.0.1:1'


@pytest.mark.parametrize('path', [
    'gs://hinet-test/run', 'gs://abc', 'gs://a_b-c.d/x', 'gs://' + 'a' * 63 + '/x',
    'gs://' + '.'.join(['a' * 63] * 3) + '/x', 's3://X/any', '/local/dir', 'relative/dir'])
def test_check_bucket_name_accepts(path):
  files.check_bucket_name(path)


@pytest.mark.parametrize('bucket', [
    'hg', 'ab', 'Bucket', '-abc', 'abc-', 'a..b', 'ab c', 'a' * 64, '.'.join(['a' * 64, 'b']), ''])
def test_check_bucket_name_refuses_with_the_rule(bucket):
  with pytest.raises(errors.InvalidInputError) as raised:
    files.check_bucket_name(f'gs://{bucket}/run')
  message = str(raised.value)
  assert f'gs://{bucket}/run: {bucket!r} cannot be a GCS bucket' in message
  assert '3-63 characters' in message and 'start' in message
  assert '\n' not in message


def test_storage_timeout_env(monkeypatch):
  monkeypatch.delenv(files.STORAGE_TIMEOUT_ENV, raising=False)
  assert files.storage_timeout_s() == files.DEFAULT_STORAGE_TIMEOUT_S
  monkeypatch.setenv(files.STORAGE_TIMEOUT_ENV, '7.5')
  assert files.storage_timeout_s() == 7.5
  for bad in ('0', '-1', 'soon', 'inf'):
    monkeypatch.setenv(files.STORAGE_TIMEOUT_ENV, bad)
    with pytest.raises(errors.InvalidInputError, match=files.STORAGE_TIMEOUT_ENV):
      files.storage_timeout_s()


def test_configure_storage_sets_every_client_knob(monkeypatch):
  """The knobs the installed libraries read, named here so that an upgrade renaming one fails."""
  fsspec = pytest.importorskip('fsspec')
  pytest.importorskip('gcsfs')
  # pylint: disable-next=g-import-not-at-top
  from orbax.checkpoint._src.serialization import tensorstore_utils
  for name in files._client_env(1):  # pylint: disable=protected-access
    monkeypatch.delenv(name, raising=False)  # Restored after the test.
  monkeypatch.setenv(files.STORAGE_TIMEOUT_ENV, '90')
  assert files.configure_storage() == 90
  for protocol in ('gs', 'gcs'):
    timeout = fsspec.config.conf[protocol]['requests_timeout']
    assert (timeout.total, timeout.sock_read, timeout.sock_connect) == (None, 30, 30)
  assert os.environ['TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS'] == '30'
  assert os.environ['GCS_REQUEST_IDLE_TIMEOUT_SECS'] == '30'
  spec = tensorstore_utils.get_ts_context(use_ocdbt=True).spec.to_json()
  assert spec['gcs_request_retries']['max_retries'] == files.STORAGE_RETRIES


def test_deadline_counts_time_without_progress():
  """The watchdog gives up on a call silent for the deadline, not on one that keeps moving."""
  run = files._run_with_deadline  # pylint: disable=protected-access

  def moving(progress):
    for _ in range(8):  # 1.6 s in all, never 1 s without progress.
      time.sleep(0.2)
      progress()
    return 'done'

  assert run('gs://abc/x', 'read', moving, 1.0) == 'done'
  release = threading.Event()
  start = time.monotonic()
  with pytest.raises(errors.StorageTimeoutError, match=r'Cannot read gs://abc/x: .*for 1 s'):
    run('gs://abc/x', 'read', lambda _: release.wait(), 1.0)
  assert time.monotonic() - start < 3
  release.set()


def test_check_writable_local(tmp_path):
  work = tmp_path / 'new' / 'run'
  files.check_writable(work, 'probe')
  assert os.listdir(work) == []  # Made, probed, and the probe deleted.


def test_check_writable_refuses_an_unwritable_local_folder(tmp_path):
  (tmp_path / 'a_file').write_text('not a folder')
  with pytest.raises(errors.StorageError, match=r'Cannot write to .*a_file/run: .*Choose a folder'):
    files.check_writable(tmp_path / 'a_file' / 'run')
  if os.geteuid() != 0:  # root writes anywhere.
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o500)
    with pytest.raises(errors.StorageError, match=r'Cannot write to .*locked: .*Permission'):
      files.check_writable(locked)


def test_train_refuses_an_unwritable_workdir_before_any_step(tmp_path):
  (tmp_path / 'a_file').write_text('not a folder')
  with pytest.raises(errors.StorageError, match=r'Cannot write to .*a_file/run'):
    loop.train_and_evaluate(tiny.get_config(), os.fspath(tmp_path / 'a_file' / 'run'))


def test_check_writable_refuses_an_impossible_bucket_before_any_request(monkeypatch):
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', _NOWHERE)
  with pytest.raises(errors.InvalidInputError, match=r"gs://hg/run: 'hg' cannot be a GCS bucket"):
    files.check_writable('gs://hg/run')


def test_train_cli_refuses_an_impossible_bucket_in_one_line():
  """`train.py --workdir=gs://hg/run` used to train to its first save, then print hundreds of
  tracebacks; it is one line now, before the model is built."""
  env = object_store.subprocess_env(dict(os.environ, JAX_PLATFORMS='cpu'), _NOWHERE)
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, 'train.py'), '--config=configs/tiny.py',
       '--workdir=gs://hg/run'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if 'error:' in line]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "gs://hg/run: 'hg' cannot be a GCS bucket (bucket names have 3-63 characters" in lines[0]
  assert 'Training from step' not in proc.stderr
