"""Exception types for mistakes in what a user passed: flags, config keys, paths and data.

Library code raises these where it detects such a mistake, with a message that names the file or
option and says the fix. Each type also derives from the built-in error a caller would expect
(`ValueError`, `FileNotFoundError`, `FileExistsError`), so code that catches those keeps working.
The command-line programs print a `UserError` as one line and exit with status 2, without a
traceback (`hinet_jax/cli/runner.py`); any other exception is a bug and keeps its traceback.

This module imports nothing, so every part of the package may use it.
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
  """Storage that cannot be reached, read or written: no connection or access, a read-only disk.

  Not an `OSError`: callers that read an `OSError` as a damaged file (`image_ops.read_image`)
  must pass this one on.
  """


class StorageTimeoutError(StorageError):
  """Object storage stopped answering: no progress within HINET_JAX_STORAGE_TIMEOUT_S."""
