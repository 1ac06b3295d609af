"""Test setup: 8 host CPU devices, fewer compiler optimisations and a faster CPU emitter
(`launch.py`), one compilation cache for the subprocesses, and the long scenarios scheduled first.

XLA_FLAGS must be set before JAX initialises its backends, hence here, before any test imports jax.
The tests run against the installed package (`pip install -e '.[test]'`). Helpers beside the tests
(`torch_reference`, `data_fixtures`) import by name: this folder has no `__init__.py`, so pytest's
default import mode puts it on `sys.path` as the conftest's directory.

The suite runs on pytest-xdist's workers (`-n auto`, pyproject.toml): most tests wait on
single-threaded XLA compiles.
"""

import os
import shutil
import tempfile

import launch

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + launch.xla_flags(8)).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ['HF_HUB_OFFLINE'] = '1'  # No test reaches the Hugging Face Hub; its cache only.
# The tests' programs compile with most of XLA's optimisations off (as flax's example tests
# do): they compile several times faster, and the tests compare values, which stay within the
# tolerances. Speed is measured in bench/, with the optimisations on.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

# One persistent compilation cache for every subprocess of a run (train.py, eval.py, ...): many
# launch the same small programs. Made by the first process (xdist's controller, whose
# environment the workers inherit) and removed by it at the end.
_CACHE_ENV = 'HINET_JAX_TEST_XLA_CACHE'
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
  os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix='hinet_jax_test_xla_cache_')
os.environ.update(JAX_COMPILATION_CACHE_DIR=os.environ[_CACHE_ENV],
                  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

# The test processes themselves compile afresh: a program loaded from the cache is no compile,
# and the no-recompile tests count compiles.
jax.config.update('jax_enable_compilation_cache', False)

# Modules of multi-process scenarios (minutes each): started first, so that no worker is left
# with one at the end while the other idles.
_LONG_FIRST = ('test_train_e2e.py', 'test_object_store.py', 'test_one_block.py',
               'test_train_loop.py')


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.path.name not in _LONG_FIRST)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)
