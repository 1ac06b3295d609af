"""One file layer for every path the project reads or writes: local folders and object storage.

Paths are `etils.epath.Path`s (what orbax and tfds use), so `gs://bucket/run` works wherever a
local folder does. Whole-file writes go through `write_bytes` / `write_text`: all or nothing (a
temp file renamed into place locally, one object upload on object storage) and, for local files,
the permissions the user's umask gives. Directory outputs (params-only checkpoints, SavedModels)
are built in a local staging folder and published whole by `staged_dir`.

Object-store failures (a missing bucket or object, no connection, no credentials) become
`errors.*` errors that name the path and the fix.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Callable, Iterator, Union

from etils import epath

from hinet_jax import errors

PathLike = Union[str, os.PathLike, epath.Path]


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path` (local or `gs://...`)."""
  return epath.Path(path)


def is_local(path: PathLike) -> bool:
  """Whether `path` is on the local file system (not object storage)."""
  return '://' not in os.fspath(path)


def _umask_mode() -> int:
  """0o666 minus the process umask: what `open(..., 'w')` would have given the file."""
  umask = os.umask(0)
  os.umask(umask)
  return 0o666 & ~umask


def _bucket(path: PathLike) -> str:
  """`gs://bucket` of an object-store path."""
  scheme, rest = os.fspath(path).split('://', 1)
  return f'{scheme}://{rest.split("/", 1)[0]}'


@contextlib.contextmanager
def storage_errors(path: PathLike, action: str) -> Iterator[None]:
  """Turns an object-store failure while `action`-ing `path` into an `errors.*` error.

  Local paths pass through untouched: their errors are already plain and name the file.

  Args:
    path: the path being read or written.
    action: a verb for the message ('read', 'write', 'list').
  """
  if is_local(path):
    yield
    return
  try:
    yield
  except errors.UserError:
    raise
  except FileNotFoundError as e:
    raise errors.MissingPathError(
        f'Cannot {action} {os.fspath(path)}: it or its bucket {_bucket(path)} does not exist. '
        'Check the path, or create the bucket (gcloud storage buckets create '
        f'{_bucket(path)}).') from e
  except Exception as e:  # pylint: disable=broad-except  # network, auth and HTTP errors vary
    raise errors.UserError(
        f'Cannot {action} {os.fspath(path)}: {type(e).__name__}: {e}. Check that the bucket '
        f'{_bucket(path)} exists, that this machine reaches it, and its credentials (the VM\'s '
        'service account, or `gcloud auth application-default login`).') from e


def exists(path: PathLike) -> bool:
  """Whether `path` (a file or a non-empty folder) exists."""
  with storage_errors(path, 'look up'):
    return as_path(path).exists()


def is_dir(path: PathLike) -> bool:
  """Whether `path` is a folder (on object storage: a prefix that holds objects)."""
  with storage_errors(path, 'look up'):
    return _surely(as_path(path).is_dir, path)


def is_file(path: PathLike) -> bool:
  """Whether `path` is a file (an object)."""
  with storage_errors(path, 'look up'):
    return _surely(as_path(path).is_file, path)


def _surely(predicate: Callable[[], bool], path: PathLike) -> bool:
  """`predicate()`, where a "no" on object storage is checked by a lookup that raises.

  gcsfs answers is_dir/is_file with False when it cannot look (access denied); `exists` raises.
  """
  if predicate():
    return True
  if not is_local(path):
    as_path(path).exists()
  return False


def read_bytes(path: PathLike) -> bytes:
  """The contents of the file at `path`."""
  with storage_errors(path, 'read'):
    return as_path(path).read_bytes()


def read_text(path: PathLike) -> str:
  """The UTF-8 text of the file at `path`."""
  return read_bytes(path).decode('utf-8')


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` whole or not at all; parent folders are created.

  Local: a temp file in the same folder, renamed over `path` (an existing good file survives
  any failure). Object storage: one upload, which the store commits atomically.
  """
  path = as_path(path)
  if not is_local(path):
    with storage_errors(path, 'write'):
      path.write_bytes(data)
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
  """`write_bytes` of UTF-8 text."""
  write_bytes(path, text.encode('utf-8'))


def remove_tree(path: PathLike) -> None:
  """Deletes the folder `path` and everything under it, if it exists."""
  with storage_errors(path, 'delete'):
    path = as_path(path)
    if path.exists():
      path.rmtree()


def _upload_tree(local_dir: str, dest: epath.Path, marker: str) -> None:
  """Copies every file under `local_dir` to `dest`, the top-level `marker` file last."""
  marker_file = os.path.join(local_dir, marker)
  for root, _, names in os.walk(local_dir):
    for name in names:
      source = os.path.join(root, name)
      if source != marker_file:
        (dest / os.path.relpath(source, local_dir)).write_bytes(epath.Path(source).read_bytes())
  (dest / marker).write_bytes(epath.Path(marker_file).read_bytes())


@contextlib.contextmanager
def staged_dir(dest: PathLike, *, marker: str) -> Iterator[str]:
  """Yields a local folder to build a directory output in; publishes it to `dest` on success.

  Nothing partial ever stands at `dest`, and an existing `dest` is replaced only by a complete
  new one. Local: the staging folder is a sibling of `dest`, renamed into place. Object storage
  has no atomic rename, so the rule there is a marker: `marker` (a top-level file of the output,
  e.g. model_config.json) is uploaded last and deleted first, and readers refuse a folder
  without it. If the body raises, nothing is published and the staging folder is removed.

  Args:
    dest: where the output goes (local or `gs://...`); replaced if it exists (callers check
      `--overwrite` before building anything).
    marker: the file whose presence says the output at `dest` is complete.

  Yields:
    The local staging folder (empty, exists).
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
    with storage_errors(dest_path, 'write'):
      if (dest_path / marker).exists():
        (dest_path / marker).unlink()  # Readers now refuse the old output while it is replaced.
      remove_tree(dest_path)
      _upload_tree(staging, dest_path, marker)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
