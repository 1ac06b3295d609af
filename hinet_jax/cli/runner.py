"""Starts a command-line program so that a user's mistake reads as one message, not a traceback.

Every program starts through `run(main)`. A known user error (bad flags, `app.UsageError`,
`errors.UserError`, an unknown `--config.KEY`, a missing `--config` file) prints `PROGRAM: error:
MESSAGE` and exits with status 2 (`--traceback` shows the traceback); anything else is a bug and
propagates.
"""

import difflib
import functools
import importlib.util
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

from absl import app
from absl import flags

from hinet_jax import errors

EXIT_USER_ERROR = 2  # As argparse exits on a usage error.
TRACEBACK_FLAG = 'traceback'
TRACEBACK_HELP = ('Show the Python traceback of errors in flags, config keys, paths or data (by '
                  'default they print one message and exit with status 2).')
_MAX_SUGGESTIONS = 5


def run(main: Callable[[List[str]], object]) -> None:
  """Runs `main(argv)` as absl's `app.run` does, reporting known user errors in one line; `--help`
  shows `main`'s module's docstring and flags."""
  if TRACEBACK_FLAG not in flags.FLAGS:
    flags.DEFINE_bool(TRACEBACK_FLAG, False, TRACEBACK_HELP)
  # absl's --help prints __main__'s docstring and the flags keyed to the module named sys.argv[0].
  main_module, program = sys.modules['__main__'], sys.modules.get(main.__module__)
  key_flags = [flags.FLAGS[TRACEBACK_FLAG]]
  if program is not None and program is not main_module:
    main_module.__doc__ = program.__doc__
    key_flags += flags.FLAGS.get_key_flags_for_module(program.__name__)
  for flag in key_flags:
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(_report_user_errors(main), flags_parser=parse_flags)


def _report_user_errors(main):

  @functools.wraps(main)
  def guarded(argv):
    try:
      return main(argv)
    except (errors.UserError, app.UsageError) as e:
      if flags.FLAGS[TRACEBACK_FLAG].value:
        raise
      exit_with_message(e)

  return guarded


def exit_with_message(error) -> None:
  """Prints `PROGRAM: error: MESSAGE` on stderr and exits with EXIT_USER_ERROR."""
  sys.stderr.write(f'{program_name()}: error: {error}\n')
  sys.stderr.flush()
  sys.exit(EXIT_USER_ERROR)


def program_name() -> str:
  """How the user started this program: `train.py`, `python -m hinet_jax.convert`, `hinet-eval`."""
  spec = getattr(sys.modules['__main__'], '__spec__', None)
  if spec is not None and spec.name != '__main__':
    return f'python -m {spec.name}'
  return os.path.basename(sys.argv[0])


def parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's flags parser (`app.run(flags_parser=...)`) with one-line messages for bad flags."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    if traceback_requested(argv):
      raise
    exit_with_message(f'{e} (see --help)')
  except Exception as e:  # pylint: disable=broad-except
    # ml_collections' unknown key or missing file; what this cannot explain propagates.
    error = check_config_flags(argv)
    if error is None:
      raise
    if traceback_requested(argv):
      raise error from e
    exit_with_message(error)
  # A missing config file parses (into a placeholder that raises when read), so check it here.
  error = check_config_flags(argv) if _config_unreadable() else None
  if error is not None:
    if traceback_requested(argv):
      raise error
    exit_with_message(error)
  return rest


def _config_unreadable() -> bool:
  for flag in _config_file_flags():
    try:
      getattr(flag.value, 'keys', None)  # The placeholder raises IOError on any attribute.
    except OSError:
      return True
  return False


def traceback_requested(argv: Sequence[str]) -> bool:
  """Whether argv asks for tracebacks (the flags may not be parsed yet)."""
  wanted = False
  for arg in argv[1:]:
    if arg == '--':
      break
    name, has_value, value = arg.lstrip('-').partition('=')
    if name == TRACEBACK_FLAG:
      wanted = not has_value or value.lower() in ('1', 'true', 't', 'yes', 'y')
    elif name == 'no' + TRACEBACK_FLAG:
      wanted = False
  return wanted


def check_config_flags(argv: Sequence[str]) -> Optional[errors.UserError]:
  """A UserError for the first missing config file or unknown override key in `argv`, or None
  (also where a config file fails in a way this cannot explain)."""
  for flag in _config_file_flags():
    spec = _flag_value_in_argv(argv, flag.name)
    if spec is None:
      continue
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
      return errors.MissingPathError(_missing_config_message(flag.name, spec, path))
    try:
      config = _load_config(path, arg)
    except Exception:  # pylint: disable=broad-except
      return None  # The config file itself fails: its own traceback says more.
    for text, key in _overrides(argv, flag.name):
      error = unknown_key_error(config, key, text, path)
      if error is not None:
        return error
  return None


def _config_file_flags() -> List[flags.Flag]:
  found = {}
  for name in list(flags.FLAGS):
    flag = flags.FLAGS[name]
    if flag.flag_type() == 'config object':  # ConfigFileFlagParser's type name.
      found[id(flag)] = flag
  return list(found.values())


def _flag_value_in_argv(argv: Sequence[str], name: str) -> Optional[str]:
  value = None
  for i, arg in enumerate(argv):
    if arg == '--':
      break
    for prefix in (f'--{name}', f'-{name}'):
      if arg.startswith(prefix + '='):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _overrides(argv: Sequence[str], name: str) -> List[tuple]:
  """(argument text, dotted key) for each `--name.KEY[=VALUE]` (or `--noname.KEY`) in argv."""
  pattern = re.compile(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)')
  found = []
  for arg in argv:
    if arg == '--':
      break
    match = pattern.match(arg)
    if match:
      found.append((arg, match.group(1)))
  return found


def _load_config(path: str, arg: str):
  spec = importlib.util.spec_from_file_location('_hinet_jax_checked_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _missing_config_message(name: str, spec: str, path: str) -> str:
  from hinet_jax import configs  # pylint: disable=g-import-not-at-top

  packaged = sorted(f[:-3] for f in os.listdir(configs.CONFIG_DIR)
                    if f.endswith('.py') and not f.startswith('_'))
  folder = os.path.dirname(path) or '.'
  siblings = sorted(f for f in os.listdir(folder) if f.endswith('.py')) if os.path.isdir(
      folder) else []
  close = difflib.get_close_matches(os.path.basename(path), siblings, n=1)
  hint = f' Did you mean {os.path.join(os.path.dirname(path), close[0])}?' if close else ''
  return (f'Config file {path} (--{name}={spec}) does not exist.{hint} Pass the path of a config '
          f'file, or a packaged config as configs/NAME.py or NAME: {", ".join(packaged)}.')


def config_key_paths(config, prefix: str = '') -> List[str]:
  """Every dotted key path of a ConfigDict in definition order: ['seed', 'optim', 'optim.lr'...]."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  paths = []
  for key, value in config.items():
    paths.append(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      paths.extend(config_key_paths(value, f'{prefix}{key}.'))
  return paths


def suggest_keys(wrong: str, paths: Sequence[str]) -> List[str]:
  """At most _MAX_SUGGESTIONS of `paths` closest to `wrong`, best first: nearly equal paths (a
  shared 'optim.' alone is not close), then paths with a close last part."""
  close = difflib.get_close_matches(wrong, paths, n=_MAX_SUGGESTIONS, cutoff=0.8)
  leaf = wrong.rsplit('.', 1)[-1]
  scored = [(difflib.SequenceMatcher(None, leaf, p.rsplit('.', 1)[-1]).ratio(), p) for p in paths]
  same_leaf = [p for score, p in sorted(scored, key=lambda sp: -sp[0]) if score >= 0.75]
  return list(dict.fromkeys(close + same_leaf))[:_MAX_SUGGESTIONS]


def unknown_key_error(config, key: str, text: str,
                      config_path: str) -> Optional[errors.InvalidInputError]:
  """An error naming `key` (as typed in `text`) and the closest valid keys if `config` has no
  such key; None if it has, or if the key leads past a ConfigDict (not checked)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  node, parent = config, ''
  for part in key.split('.'):
    name, index, _ = part.partition('[')
    if not isinstance(node, ml_collections.ConfigDict):
      return None
    if name not in node:
      break
    node, parent = node[name], f'{parent}{name}.'
    if index:
      return None
  else:
    return None
  shown = text if len(text) <= 80 else text[:77] + '...'
  message = f'Unknown config key {key!r} in {config_path} ({shown}).'
  suggestions = suggest_keys(key, config_key_paths(config))
  if suggestions:
    message += f' Did you mean: {", ".join(suggestions)}?'
  else:
    where = f'config.{parent[:-1]}' if parent else 'the config'
    message += f' The keys of {where} are: {", ".join(node.keys())}.'
  return errors.InvalidInputError(message)
