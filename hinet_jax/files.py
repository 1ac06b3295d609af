"""One file layer for every path the project reads or writes: local folders and object storage.

Paths are `etils.epath.Path`s, so `gs://bucket/run` works wherever a local folder does. Writes are
all or nothing (`write_bytes`, `staged_dir`) with the umask's permissions; object-store failures
become `errors.*` that name the path and the fix. No object-store call waits forever: each client
gets a per-request deadline (`configure_storage`), and each call of this module a watchdog that
raises `errors.StorageTimeoutError` after HINET_JAX_STORAGE_TIMEOUT_S without progress.
"""

import contextlib
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Union

from etils import epath

from hinet_jax import errors

PathLike = Union[str, os.PathLike, epath.Path]

STORAGE_TIMEOUT_ENV = 'HINET_JAX_STORAGE_TIMEOUT_S'
DEFAULT_STORAGE_TIMEOUT_S = 120.0  # google-cloud-storage's own total for a request's retries
REQUEST_SHARE = 3  # a request is retried after a third of the call deadline without an answer
STORAGE_RETRIES = 5  # TensorStore's and tf.io.gfile's; gcsfs's is fixed at 5
# A transfer earns one more call deadline per this many bytes (a slow link is not a stall).
BYTES_PER_DEADLINE = 64 << 20
PROBE_FILE = '.hinet_jax_write_probe'
# GCS's rule, https://cloud.google.com/storage/docs/buckets#naming (63 between dots, 222 in all).
_BUCKET_NAME = re.compile(r'[a-z0-9](?:[a-z0-9._-]{1,220})[a-z0-9]')
_BUCKET_RULE = ('bucket names have 3-63 characters: lowercase letters, digits, dashes, '
                'underscores and dots, starting and ending with a letter or digit')
_GCS_ENDPOINT = 'https://storage.googleapis.com'
_ORBAX_TS_UTILS = 'orbax.checkpoint._src.serialization.tensorstore_utils'


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path` (local or `gs://...`); object-store clients get deadlines first."""
  if not is_local(path):
    configure_storage()
  return epath.Path(path)


def is_local(path: PathLike) -> bool:
  """Whether `path` is on the local file system (not object storage)."""
  return '://' not in os.fspath(path)


def _umask_mode() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def _bucket(path: PathLike) -> str:
  scheme, rest = os.fspath(path).split('://', 1)
  return f'{scheme}://{rest.split("/", 1)[0]}'


def check_bucket_name(path: PathLike) -> None:
  """Raises `errors.InvalidInputError` for a GCS bucket name GCS cannot have, before any request
  (TensorStore would refuse it only at orbax's first write)."""
  path = os.fspath(path)
  if is_local(path) or path.split('://', 1)[0] not in ('gs', 'gcs'):
    return
  bucket = _bucket(path).split('://', 1)[1]
  if (_BUCKET_NAME.fullmatch(bucket) and max(len(part) for part in bucket.split('.')) <= 63
      and '..' not in bucket):
    return
  raise errors.InvalidInputError(
      f'{path}: {bucket!r} cannot be a GCS bucket ({_BUCKET_RULE}). Check the path.')


def storage_timeout_s() -> float:
  """The call deadline in seconds: HINET_JAX_STORAGE_TIMEOUT_S, or DEFAULT_STORAGE_TIMEOUT_S."""
  value = os.environ.get(STORAGE_TIMEOUT_ENV, '').strip()
  if not value:
    return DEFAULT_STORAGE_TIMEOUT_S
  try:
    seconds = float(value)
  except ValueError:
    seconds = float('nan')
  if not (math.isfinite(seconds) and seconds > 0):
    raise errors.InvalidInputError(
        f'{STORAGE_TIMEOUT_ENV}={value!r}: expected a number of seconds > 0 (the deadline of one '
        f'object-storage call; unset, {DEFAULT_STORAGE_TIMEOUT_S:g}).')
  return seconds


class _DropRetriedErrors(logging.Filter):
  """Drops gcsfs's "out of retries" tracebacks: the error goes on to the caller, named there."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'retries on exception' not in str(record.msg) and 'non-retriable' not in str(record.msg)


class _ClientSettings:
  timeout_s = None
  orbax_done = False
  lock = threading.Lock()


def configure_storage() -> float:
  """Gives gcsfs, TensorStore and tf.io.gfile a deadline of `storage_timeout_s() / REQUEST_SHARE`
  per request (to connect and to hear back, not in total) and bounded retries; idempotent.

  Returns:
    The call deadline, `storage_timeout_s()`.
  """
  timeout = storage_timeout_s()
  with _ClientSettings.lock:
    if _ClientSettings.timeout_s != timeout:
      request = timeout / REQUEST_SHARE
      os.environ.update(_client_env(request))
      _set_gcsfs_timeout(request)
      if _ClientSettings.timeout_s is None:
        logging.getLogger('gcsfs').addFilter(_DropRetriedErrors())
      _ClientSettings.timeout_s = timeout
    if not _ClientSettings.orbax_done:
      _ClientSettings.orbax_done = _bound_orbax_tensorstore_retries()
  return timeout


def _client_env(request_s: float) -> dict:
  seconds = str(max(1, math.ceil(request_s)))
  return {
      'TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS': seconds,
      # Fewer than 1 byte/s for `seconds` seconds: a stall, however long the transfer.
      'TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS': seconds,
      'TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES': '1',
      'GCS_REQUEST_CONNECTION_TIMEOUT_SECS': seconds,
      'GCS_REQUEST_IDLE_TIMEOUT_SECS': seconds,
      'GCS_RETRY_CONFIG_MAX_RETRIES': str(STORAGE_RETRIES),
  }


def _set_gcsfs_timeout(request_s: float) -> None:
  """Sets gcsfs's per-request timeout (default: none) for new clients and existing ones."""
  try:
    import aiohttp  # pylint: disable=g-import-not-at-top
    import fsspec  # pylint: disable=g-import-not-at-top
  except ImportError:  # No gcsfs: epath serves gs:// through tf.io.gfile.
    return
  timeout = aiohttp.ClientTimeout(total=None, sock_connect=request_s, sock_read=request_s)
  for protocol in ('gs', 'gcs'):
    fsspec.config.conf.setdefault(protocol, {})['requests_timeout'] = timeout
  core = sys.modules.get('gcsfs.core')
  if core is None:
    return
  classes = [core.GCSFileSystem]
  while classes:
    cls = classes.pop()
    classes.extend(cls.__subclasses__())
    for client in list(getattr(cls, '_cache', {}).values()):
      client.requests_timeout = timeout


def _bound_orbax_tensorstore_retries() -> bool:
  """Bounds GCS retries in the module defaults orbax builds TensorStore contexts from (it has no
  option for them); False until orbax is loaded."""
  module = sys.modules.get(_ORBAX_TS_UTILS)
  if module is None:
    return False
  retries = {'max_retries': STORAGE_RETRIES, 'initial_delay': '1s', 'max_delay': '10s'}
  for name in ('_BASE_TS_CONTEXT', '_DEFAULT_OCDBT_TS_CONTEXT'):
    context = getattr(module, name, None)
    if isinstance(context, dict):
      context['gcs_request_retries'] = dict(retries)
  return True


def _timeout_error(path: PathLike, action: str, waited: float) -> errors.StorageTimeoutError:
  emulator = os.environ.get('STORAGE_EMULATOR_HOST')
  if emulator:
    check = (f'Check that the emulator at {emulator} (STORAGE_EMULATOR_HOST) is running and '
             'answers')
  else:
    check = f"Check this machine's network (firewall, proxy) and that it reaches {_GCS_ENDPOINT}"
  return errors.StorageTimeoutError(
      f'Cannot {action} {os.fspath(path)}: object storage gave no answer for {waited:g} s. '
      f'{check}; on a slow link raise {STORAGE_TIMEOUT_ENV} (now {storage_timeout_s():g} s).')


def _run_with_deadline(path: PathLike, action: str, fn: Callable[[Callable[[], None]], Any],
                       timeout: float) -> Any:
  """`fn(progress)`, given up on after `timeout` seconds without `progress()`; it runs in a
  daemon thread, since the clients cannot be cancelled from outside."""
  outcome = {}
  done = threading.Event()
  last = [time.monotonic()]

  def progress():
    last[0] = time.monotonic()

  def work():
    try:
      outcome['value'] = fn(progress)
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the caller
      outcome['error'] = e
    finally:
      done.set()

  threading.Thread(target=work, name=f'hinet_jax storage: {action}', daemon=True).start()
  while not done.wait(max(0.0, last[0] + timeout - time.monotonic())):
    if time.monotonic() - last[0] >= timeout:
      raise _timeout_error(path, action, timeout)
  if 'error' in outcome:
    raise outcome['error']
  return outcome.get('value')


def _call(path: PathLike, action: str, fn: Callable[[Callable[[], None]], Any],
          nbytes: int = 0) -> Any:
  """`fn(progress)` on `path`: directly if local; on object storage under `storage_errors` and a
  deadline (one more per BYTES_PER_DEADLINE of `nbytes` moved in one piece)."""
  if is_local(path):
    return fn(lambda: None)
  with storage_errors(path, action):
    timeout = configure_storage()
    return _run_with_deadline(path, action, fn, timeout * (1 + nbytes / BYTES_PER_DEADLINE))


@contextlib.contextmanager
def storage_errors(path: PathLike, action: str) -> Iterator[None]:
  """Turns an object-store failure while `action`-ing `path` into an `errors.*` error (local
  errors already name the file)."""
  if is_local(path):
    yield
    return
  check_bucket_name(path)
  try:
    yield
  except errors.UserError:
    raise
  except TimeoutError as e:  # gcsfs's FSTimeoutError, aiohttp's and asyncio's timeouts.
    raise _timeout_error(path, action, storage_timeout_s()) from e
  except FileNotFoundError as e:
    raise errors.MissingPathError(
        f'Cannot {action} {os.fspath(path)}: it or its bucket {_bucket(path)} does not exist. '
        'Check the path, or create the bucket (gcloud storage buckets create '
        f'{_bucket(path)}).') from e
  except Exception as e:  # pylint: disable=broad-except  # network, auth and HTTP errors vary
    raise errors.StorageError(
        f'Cannot {action} {os.fspath(path)}: {type(e).__name__}: {e}. Check that the bucket '
        f'{_bucket(path)} exists, that this machine reaches it, and its credentials (the VM\'s '
        'service account, or `gcloud auth application-default login`).') from e


def call_with_deadline(path: PathLike, action: str, fn: Callable[[], Any],
                       nbytes: int = 0) -> Any:
  """`fn()`, another library's call on `path` (orbax's saves and restores), under this module's
  deadline and error rules; it reports no progress, so `nbytes` sets its deadline."""
  return _call(path, action, lambda _: fn(), nbytes=nbytes - nbytes % BYTES_PER_DEADLINE)


def exists(path: PathLike) -> bool:
  """Whether `path` (a file or a non-empty folder) exists."""
  return _call(path, 'look up', lambda _: as_path(path).exists())


def new_output(path: PathLike, overwrite: bool = False) -> str:
  """`path` (absolute, if local) for an output about to be written; `errors.OutputExistsError`
  naming the fix if it exists and `overwrite` is False."""
  path = os.path.abspath(path) if is_local(path) else os.fspath(path)
  if exists(path) and not overwrite:
    raise errors.OutputExistsError(f'{path} already exists; choose another --output or pass '
                                   '--overwrite to replace it.')
  return path


def is_dir(path: PathLike) -> bool:
  """Whether `path` is a folder (on object storage: a prefix that holds objects)."""
  return _call(path, 'look up', lambda _: _surely(as_path(path).is_dir, path))


def is_file(path: PathLike) -> bool:
  """Whether `path` is a file (an object)."""
  return _call(path, 'look up', lambda _: _surely(as_path(path).is_file, path))


def _surely(predicate: Callable[[], bool], path: PathLike) -> bool:
  """`predicate()`, with an object-store "no" confirmed by `exists`, which raises where gcsfs's
  is_dir/is_file say False for want of access."""
  if predicate():
    return True
  if not is_local(path):
    as_path(path).exists()
  return False


def read_bytes(path: PathLike) -> bytes:
  if is_local(path):
    return as_path(path).read_bytes()

  def read(progress):
    chunks = []
    with as_path(path).open('rb') as f:
      while chunk := f.read(BYTES_PER_DEADLINE):
        chunks.append(chunk)
        progress()
    return b''.join(chunks)

  return _call(path, 'read', read)


def read_text(path: PathLike) -> str:
  return read_bytes(path).decode('utf-8')


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` whole or not at all, creating parent folders: locally a temp file
  renamed over `path`; on object storage one upload, which the store commits atomically."""
  path = as_path(path)
  if not is_local(path):
    _call(path, 'write', lambda _: path.write_bytes(data), nbytes=len(data))
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.chmod(tmp, _umask_mode())  # mkstemp makes 0600 files; give what the umask gives.
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: PathLike, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def remove_file(path: PathLike) -> None:
  """Deletes the file `path`, if it exists."""

  def remove(_):
    if as_path(path).exists():
      as_path(path).unlink()

  _call(path, 'delete', remove)


def remove_tree(path: PathLike) -> None:
  """Deletes the folder `path` and everything under it, if it exists."""

  def remove(_):
    if as_path(path).exists():
      as_path(path).rmtree()

  _call(path, 'delete', remove)


def check_writable(folder: PathLike, probe_name: str = PROBE_FILE) -> None:
  """Writes, reads back and deletes a probe file in `folder` (created if missing), so a folder a
  program cannot write is one `errors.UserError` at its start; processes sharing `folder` each
  pass their own `probe_name`."""
  check_bucket_name(folder)
  probe = as_path(folder) / probe_name
  token = f'hinet_jax write probe {uuid.uuid4()}\n'.encode()
  try:
    write_bytes(probe, token)
    readback = read_bytes(probe)
    remove_file(probe)
  except errors.UserError:
    raise
  except OSError as e:  # Local: permissions, a read-only or full disk, a file in the way.
    raise errors.StorageError(
        f'Cannot write to {os.fspath(folder)}: {type(e).__name__}: {e}. Choose a folder this '
        'user can write, or fix its permissions or free space.') from e
  if readback != token:
    raise errors.StorageError(
        f'{os.fspath(folder)}: the probe file {probe_name} read back other bytes than were '
        'written; check the storage behind this path.')


def _upload_tree(local_dir: str, dest: epath.Path, marker: str) -> None:
  """Copies every file under `local_dir` to `dest`, the top-level `marker` file last."""
  marker_file = os.path.join(local_dir, marker)
  for root, _, names in os.walk(local_dir):
    for name in names:
      source = os.path.join(root, name)
      if source != marker_file:
        write_bytes(dest / os.path.relpath(source, local_dir), epath.Path(source).read_bytes())
  write_bytes(dest / marker, epath.Path(marker_file).read_bytes())


@contextlib.contextmanager
def staged_dir(dest: PathLike, *, marker: str) -> Iterator[str]:
  """Yields an empty local folder to build a directory output in; publishes it to `dest`
  (replacing it) only if the body succeeds.

  Locally the folder is renamed into place. Object storage has no atomic rename: the top-level
  `marker` file is deleted first and uploaded last, and readers refuse a folder without it.
  """
  dest_path = as_path(os.path.abspath(dest) if is_local(dest) else dest)
  if is_local(dest_path):
    staging = os.fspath(dest_path) + '.tmp-partial'
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
  else:
    staging = tempfile.mkdtemp(prefix='hinet_jax_staging_')
  try:
    yield staging
    if not os.path.isfile(os.path.join(staging, marker)):
      raise FileNotFoundError(f'staged output {staging} lacks its marker {marker}')
    if is_local(dest_path):
      shutil.rmtree(dest_path, ignore_errors=True)
      os.replace(staging, dest_path)
      return
    remove_file(dest_path / marker)  # Readers now refuse the old output while it is replaced.
    remove_tree(dest_path)
    _upload_tree(staging, dest_path, marker)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
