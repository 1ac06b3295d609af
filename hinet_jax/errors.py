"""Exceptions for mistakes in what a user passed (flags, config keys, paths, data), raised with
the fix in the message. Each also derives from the built-in error a caller would catch; the
programs print one line and exit with status 2 (`cli/runner.py`). Imports nothing.
"""


class UserError(Exception):
  """A mistake in the user's input; the message names the file or option and the fix."""


class InvalidInputError(UserError, ValueError):
  """A bad value or bad data: an unknown option, mismatched image names or sizes, ..."""


class MissingPathError(UserError, FileNotFoundError):
  """A file or folder the user named does not exist (or is not the kind expected)."""


class OutputExistsError(UserError, FileExistsError):
  """An output already exists and the user did not ask to replace it."""


class StorageError(UserError):
  """Storage that cannot be reached, read or written. Not an `OSError`, which callers
  (`image_ops.read_image`) read as a damaged file."""


class StorageTimeoutError(StorageError):
  """Object storage stopped answering: no progress within HINET_JAX_STORAGE_TIMEOUT_S."""
