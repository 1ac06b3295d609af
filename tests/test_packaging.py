"""The installed package: configs found from any directory, C++ sources inside, console scripts.

(The whole install, `pip install .` run from another directory, is checked by hand before a
release: CONTRIBUTING.md.)
"""

import ast
import importlib.metadata
import importlib.resources
import importlib.util
import os
import pathlib
import re

from hinet_jax import configs

PROGRAMS = {'hinet-train', 'hinet-eval', 'hinet-convert', 'hinet-export', 'hinet-prepare-sidd',
            'hinet-prepare-gopro', 'hinet-serve'}


def test_packaged_configs_resolve_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  demo = os.path.join(configs.CONFIG_DIR, 'demo.py')
  assert configs.resolve('configs/demo.py') == demo
  assert configs.resolve('demo') == demo
  assert configs.resolve('configs/sidd.py:0.5x') == os.path.join(configs.CONFIG_DIR,
                                                                 'sidd.py') + ':0.5x'
  # Not a packaged config: left for config_flags to report as a missing file.
  assert configs.resolve('configs/nope.py') == 'configs/nope.py'
  assert configs.resolve('elsewhere/demo.py') == 'elsewhere/demo.py'
  assert configs.resolve('configs/__init__.py') == 'configs/__init__.py'
  # A file that exists where the command runs wins over the packaged one.
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'demo.py').write_text('')
  assert configs.resolve('configs/demo.py') == 'configs/demo.py'
  assert configs.resolve_flag(['prog', '--config', 'tiny', '--config.batch_size=4']) == [
      'prog', '--config', os.path.join(configs.CONFIG_DIR, 'tiny.py'), '--config.batch_size=4']


def test_every_packaged_config_has_get_config():
  names = [n for n in os.listdir(configs.CONFIG_DIR) if n.endswith('.py') and n != '__init__.py']
  assert {'default.py', 'demo.py', 'sidd.py', 'tiny.py'} <= set(names)
  for name in names:
    with open(os.path.join(configs.CONFIG_DIR, name)) as f:
      tree = ast.parse(f.read())
    assert 'get_config' in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name


def test_cpp_sources_ship_inside_the_package():
  assert (importlib.resources.files('hinet_jax.cpu') / 'csrc' / 'conv_kernels.cc').is_file()


def test_console_scripts_name_existing_functions():
  """Read from the install's metadata; checked in the source, so no program's flags get defined."""
  scripts = [e for e in importlib.metadata.entry_points(group='console_scripts')
             if e.value.startswith('hinet_jax.')]
  assert {e.name for e in scripts} == PROGRAMS
  for entry in scripts:
    module, _, function = entry.value.partition(':')
    with open(importlib.util.find_spec(module).origin) as f:
      tree = ast.parse(f.read())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, entry


def test_ci_runs_the_readme_test_command_verbatim():
  """CI runs exactly what the README's quick start tells users to run for the tests."""
  root = pathlib.Path(__file__).resolve().parent.parent
  readme = (root / 'README.md').read_text()
  blocks = re.findall(r'```bash\n(.*?)\n```', readme, flags=re.S)
  (test_command,) = [b for b in blocks if 'pytest' in b]
  ci_lines = (root / '.ci' / 'run').read_text().splitlines()
  assert test_command.strip() in [line.strip() for line in ci_lines]
  # No second, different test command anywhere else in the README (prose or tables).
  assert [line for line in readme.splitlines() if 'pytest' in line] == [test_command.strip()]
