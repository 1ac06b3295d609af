"""The code reads as code: comment and docstring lines per code line, per subpackage.

Measurement stories belong in bench/README.md; a comment states the decision and where its
evidence lives. `configs/` is exempt: its docstrings are the user's documentation of each recipe.
"""

import ast
import io
import pathlib
import tokenize

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 'hinet_jax'
MAX_PROSE_PER_CODE_LINE = 0.4


def line_kinds(source: str) -> tuple[int, int]:
  """(prose lines, code lines) of one module: comments and docstrings vs the rest, blanks
  excluded. A line with code and a trailing comment counts as code."""
  docstring_lines = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
          and isinstance(body[0].value.value, str):
        docstring_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
  comment_lines, code_lines = set(), set()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      comment_lines.add(tok.start[0])
    elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                          tokenize.ENDMARKER):
      code_lines.update(range(tok.start[0], tok.end[0] + 1))
  code_lines -= docstring_lines
  prose = docstring_lines | (comment_lines - code_lines)
  return len(prose), len(code_lines)


def prose_per_code_line(paths) -> float:
  prose = code = 0
  for path in paths:
    p, c = line_kinds(path.read_text())
    prose, code = prose + p, code + c
  return prose / max(code, 1)


def test_line_kinds_counts_comments_and_docstrings_as_prose():
  source = '"""Module.\n\nMore."""\n\n# A comment.\nx = 1  # trailing\n\ndef f():\n  """Doc."""\n  return x\n'
  assert line_kinds(source) == (5, 3)


SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir()
                     if p.is_dir() and (p / '__init__.py').exists() and p.name != 'configs')


def modules(name: str) -> list[pathlib.Path]:
  """A subpackage's modules; 'hinet_jax' names the package's top-level modules."""
  return sorted(PACKAGE.glob('*.py') if name == 'hinet_jax' else (PACKAGE / name).rglob('*.py'))


@pytest.mark.parametrize('name', ['hinet_jax', *SUBPACKAGES])
def test_subpackage_prose_per_code_line(name):
  ratio = prose_per_code_line(modules(name))
  assert ratio <= MAX_PROSE_PER_CODE_LINE, (
      f'hinet_jax/{name}: {ratio:.2f} comment and docstring lines per code line (at most '
      f'{MAX_PROSE_PER_CODE_LINE}): state decisions in a line or two; measurements go to '
      'bench/README.md.')


if __name__ == '__main__':
  for group in ['hinet_jax', *SUBPACKAGES]:
    print(f'{group:12s} {prose_per_code_line(modules(group)):.2f}')
