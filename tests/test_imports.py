"""The package's imports follow the dependency map in CONTRIBUTING.md and form no cycle.

Every import counts, those inside functions too. The map is read from CONTRIBUTING.md's
`imports` block, so the document and this test cannot disagree.
"""

import ast
import pathlib
import re
from typing import Dict, List, Optional, Set

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'hinet_jax'
MAP_BLOCK = re.compile(r'```imports\n(.*?)```', re.S)

Graph = Dict[str, Set[str]]


def module_name(path: pathlib.Path) -> str:
  """'hinet_jax.train.loop' for hinet_jax/train/loop.py; a package's `__init__` is the package."""
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def package_modules() -> Dict[str, pathlib.Path]:
  return {module_name(p): p for p in PACKAGE.rglob('*.py')}


def _resolve(name: str, modules: Set[str]) -> Optional[str]:
  """The package module that importing `name` names (its longest existing prefix), or None."""
  parts = name.split('.')
  for end in range(len(parts), 0, -1):
    if '.'.join(parts[:end]) in modules:
      return '.'.join(parts[:end])
  return None


def imports_of(source: str, module: str, is_package: bool, modules: Set[str]) -> Set[str]:
  """The package modules that `module` imports anywhere in `source`."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = module.split('.')[:len(module.split('.')) - node.level + is_package]
        base = '.'.join(anchor + ([base] if base else []))
      names = [f'{base}.{a.name}' for a in node.names]  # `from pkg import mod` imports pkg.mod.
    else:
      continue
    found.update(m for m in (_resolve(n, modules) for n in names) if m)
  return found - {module}


def import_graph() -> Graph:
  modules = package_modules()
  return {m: imports_of(p.read_text(), m, p.name == '__init__.py', set(modules))
          for m, p in modules.items()}


def group_of(module: str) -> str:
  """The map's name for a module: 'train/' for a subpackage's, 'api.py' for a top-level one."""
  parts = module.split('.')
  if len(parts) == 1:
    return '__init__.py'
  if (PACKAGE / parts[1]).is_dir():
    return parts[1] + '/'
  return parts[1] + '.py'


def read_map(text: str) -> Dict[str, Set[str]]:
  """{group: groups it may import} from the `imports` block: `a/ b.py -> c/ d.py` per line."""
  match = MAP_BLOCK.search(text)
  assert match, 'CONTRIBUTING.md has no ```imports block (the dependency map).'
  allowed = {}
  for line in match.group(1).splitlines():
    if '->' in line:
      left, right = line.split('->')
      for group in left.split():
        allowed[group] = set(right.split())
  return allowed


def violations(graph: Graph, allowed: Dict[str, Set[str]]) -> List[str]:
  """'a -> b' for every import between groups that the map does not allow."""
  out = []
  for module, targets in sorted(graph.items()):
    for target in sorted(targets):
      src, dst = group_of(module), group_of(target)
      if src != dst and dst not in allowed.get(src, set()):
        out.append(f'{module} -> {target} ({src} may import: {sorted(allowed.get(src, ()))})')
  return out


def find_cycle(graph: Graph) -> Optional[List[str]]:
  """One import cycle of `graph` as [m0, m1, ..., m0], or None."""
  state, stack = {}, []

  def visit(m):
    state[m] = 'open'
    stack.append(m)
    for n in sorted(graph.get(m, ())):
      if state.get(n) == 'open':
        return stack[stack.index(n):] + [n]
      if n not in state:
        cycle = visit(n)
        if cycle:
          return cycle
    stack.pop()
    state[m] = 'done'
    return None

  for m in sorted(graph):
    if m not in state:
      cycle = visit(m)
      if cycle:
        return cycle
  return None


def _map() -> Dict[str, Set[str]]:
  return read_map((REPO / 'CONTRIBUTING.md').read_text())


def test_the_package_has_no_import_cycle():
  assert find_cycle(import_graph()) is None


def test_imports_follow_the_map_in_contributing():
  assert violations(import_graph(), _map()) == []


def test_every_module_is_on_the_map():
  groups = {group_of(m) for m in package_modules()}
  assert groups <= set(_map()), f'add to CONTRIBUTING.md\'s map: {sorted(groups - set(_map()))}'


def test_a_made_up_cycle_and_a_wrong_way_import_are_caught():
  graph = {'hinet_jax.models.hinet': {'hinet_jax.models.layers'},
           'hinet_jax.models.layers': {'hinet_jax.models.hinet'}}
  assert find_cycle(graph) == ['hinet_jax.models.hinet', 'hinet_jax.models.layers',
                               'hinet_jax.models.hinet']
  upward = {'hinet_jax.models.hinet': {'hinet_jax.train.loop'}}
  assert find_cycle(upward) is None
  assert violations(upward, _map()) and 'models/ may import' in violations(upward, _map())[0]


def test_imports_inside_functions_and_relative_ones_count():
  modules = {'hinet_jax', 'hinet_jax.api', 'hinet_jax.train', 'hinet_jax.train.checkpointing',
             'hinet_jax.train.loop'}
  source = ('def f():\n  from hinet_jax.train import checkpointing\n'
            'from . import loop\nimport numpy\n')
  assert imports_of(source, 'hinet_jax.train.step', False, modules) == {
      'hinet_jax.train.checkpointing', 'hinet_jax.train.loop'}
  assert imports_of('from hinet_jax import api', 'hinet_jax', True, modules) == {'hinet_jax.api'}
