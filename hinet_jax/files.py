"""One file layer for every path the project reads or writes: local folders and object storage.

Paths are `etils.epath.Path`s (what orbax and tfds use), so `gs://bucket/run` works wherever a
local folder does. Whole-file writes go through `write_bytes` / `write_text`: all or nothing (a
temp file renamed into place locally, one object upload on object storage) and, for local files,
the permissions the user's umask gives.
"""

import os
import tempfile
from typing import Union

from etils import epath

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


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` whole or not at all; parent folders are created.

  Local: a temp file in the same folder, renamed over `path` (an existing good file survives
  any failure). Object storage: one upload, which the store commits atomically.
  """
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if not is_local(path):
    path.write_bytes(data)
    return
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
