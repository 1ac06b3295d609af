"""Training configs (ml_collections), one file per recipe; each docstring gives its run command.

This folder is the configs' one home: the repository's top-level `configs/` is a link to it, so
`python train.py --config=configs/sidd.py` works in a clone, and the installed package carries the
configs with it. `resolve` lets the installed `hinet-train` find them from any directory by the
same relative path (`--config=configs/demo.py`) or by name (`--config=demo`). No library module
imports a config: they are read by the entry points, the benchmarks and the tests.
"""

import os
from typing import List, Sequence

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))


def resolve(spec: str) -> str:
  """Maps a `--config` value to a config file: the path as given, else the packaged config.

  Args:
    spec: `PATH[:ARG]` as `--config` takes it, e.g. `configs/sidd.py:0.5x`, `/my/config.py`,
      `demo`.

  Returns:
    `spec` unchanged when PATH exists, or when it is neither `configs/NAME.py` nor a bare `NAME`
    or `NAME.py` of a config in this folder (config_flags then reports the missing file);
    otherwise the packaged config's absolute path, `:ARG` kept.
  """
  path, sep, arg = spec.partition(':')
  if not path or os.path.exists(path):
    return spec
  folder, name = os.path.split(os.path.normpath(path))
  if folder not in ('', 'configs'):
    return spec
  if not name.endswith('.py'):
    name += '.py'
  packaged = os.path.join(CONFIG_DIR, name)
  if name.startswith('_') or not os.path.isfile(packaged):
    return spec
  return packaged + sep + arg


def resolve_flag(argv: Sequence[str]) -> List[str]:
  """Applies `resolve` to the value of `--config` in a command line.

  Args:
    argv: the command line (`sys.argv`), with `--config=SPEC` or `--config SPEC`.

  Returns:
    A copy of `argv` with the config's value resolved; `--config.x=y` overrides are untouched.
  """
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + resolve(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out
