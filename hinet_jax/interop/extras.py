"""The optional dependencies of the export formats, imported only when a format is used."""

import importlib
from types import ModuleType

from hinet_jax import errors


class MissingExtraError(errors.UserError, ImportError):
  """A format's optional dependency is not installed; the message names the extra."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
  """Imports `module`, or raises MissingExtraError naming `extra` and the pip command.

  Args:
    module: the module to import, e.g. 'onnx'.
    extra: the `hinet-jax[...]` extra that installs it.
    purpose: what needs it, for the message ('--format=onnx').

  Returns:
    The module.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(
        f'{purpose} needs {module.split(".")[0]}, which is not installed: '
        f"pip install 'hinet-jax[{extra}]' (or, in a clone, pip install -e '.[{extra}]').") from e
