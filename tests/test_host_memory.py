"""host_memory.keep_freed_memory: freed buffers come back without page faults, from any thread."""

import os
import subprocess
import sys
import textwrap

import pytest

from hinet_jax.cpu import host_memory

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A worker thread (like XLA's) mallocs and fills a 256 MiB buffer, frees it and does it again:
# the page faults of the second round say whether freed memory came back to the process or went
# to the OS. (Plain malloc as XLA uses it: numpy would madvise huge pages.)
_PROBE = textwrap.dedent('''
    import ctypes, json, resource, sys, threading
    from hinet_jax.cpu import host_memory
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    applied = host_memory.keep_freed_memory(only_on_cpu=False) if sys.argv[1] == 'keep' else None
    faults = []
    def work():
      for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = libc.malloc(256 * 2**20)
        ctypes.memset(buf, 1, 256 * 2**20)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        libc.free(buf)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    print(json.dumps({'applied': applied, 'faults': faults}))
''')


def _probe(mode, **env):
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True, text=True,
                       cwd=_ROOT, env=dict(os.environ, **env), check=True)
  import json  # pylint: disable=g-import-not-at-top
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (sys.platform.startswith('linux') and
                         os.confstr('CS_GNU_LIBC_VERSION').startswith('glibc')),
                    reason='glibc malloc only')
def test_freed_memory_is_reused_without_page_faults():
  pages = 256 * 2**20 // os.sysconf('SC_PAGE_SIZE')
  default = _probe('default')
  assert default['faults'][1] > pages // 2, default  # glibc's default: munmap, fault again
  kept = _probe('keep')
  assert kept['applied'] is True
  assert kept['faults'][0] > pages // 2, kept  # the first round still faults its pages in
  assert kept['faults'][1] < pages // 20, kept  # the second reuses them


def test_opt_out_leaves_malloc_alone():
  result = _probe('keep', HINET_JAX_KEEP_FREED_MEMORY='0')
  assert result['applied'] is False


def test_accelerator_runs_are_left_alone(monkeypatch):
  monkeypatch.setattr(host_memory, 'will_run_on_cpu', lambda: False)
  monkeypatch.setattr(host_memory, '_applied', False)
  assert host_memory.keep_freed_memory() is False
