r"""A local web page that restores photos with a HINet checkpoint (the `serve` extra: Gradio).

  hinet-serve --checkpoint=DIR [--which=latest|best] [--host=127.0.0.1] [--port=7860] \
      [--max_megapixels=100] [--backend=auto] [--batch_size=8]

Also `python -m hinet_jax.serve`, and `app.py` as a Hugging Face Space. DIR is a converted
checkpoint or a training workdir, as for eval.py. Each photo goes through the function behind
`eval.py --input` (PNG out at the input's bit depth and size); restores run one at a time, the
others wait in a queue that shows their place. The page listens on 127.0.0.1 (this machine only)
unless --host says otherwise; uploads and results live in a temporary folder removed at exit.
"""

import signal
from typing import Optional

from absl import flags
from absl import logging

from hinet_jax import api
from hinet_jax import backends
from hinet_jax import errors
from hinet_jax import models
from hinet_jax.cli import runner
from hinet_jax.evaluation import predictor as predictor_lib
from hinet_jax.evaluation import restore as restore_lib
from hinet_jax.interop import extras
from hinet_jax.web import page
from hinet_jax.web import restoring

_LOOPBACK = ('127.0.0.1', 'localhost', '::1')


def load_predictor(checkpoint: str, *, which: str = 'latest', backend: str = 'auto',
                   batch_size: int = restore_lib.DEFAULT_BATCH_SIZE,
                   local_stats: Optional[int] = None, low_memory: bool = False):
  """(predictor, text naming the model) for `checkpoint`, with eval.py's restore defaults."""
  # No `backends.prepare_process()`: kept freed memory serves XLA's training and evaluation
  # steps, but here a large photo's buffers fragment that one heap. glibc's own malloc gives the
  # page a peak about 1 GB lower for a 24 MP photo at 1x, at the same speed (bench/README.md).
  model, params = api.load_pretrained(checkpoint, which=which, backend=backend)
  text = f'{type(model).__name__}, {models.count_params(params) / 1e6:.2f} M parameters'
  local_stats = models.window_of_flag(local_stats)
  if local_stats is not None:
    text += f', local statistics over {local_stats} px'
  predictor = predictor_lib.Predictor(
      model, params, backend=backend, tile=restore_lib.DEFAULT_TILE,
      overlap=restore_lib.DEFAULT_OVERLAP, batch_size=batch_size, local_stats=local_stats,
      low_memory=low_memory)
  return predictor, text


def serve(predictor, model_text: str, *, host: str = page.DEFAULT_HOST,
          port: int = page.DEFAULT_PORT,
          max_pixels: int = restore_lib.DEFAULT_MAX_PIXELS) -> None:
  """Serves the page until interrupted (Ctrl-C or SIGTERM), then removes its temporary folder."""
  if host not in _LOOPBACK:
    logging.warning('Listening on %s: anyone who can reach this address can upload photos and '
                    'use this machine to restore them.', host)
  workspace = restoring.Workspace()
  blocks = None
  previous = signal.signal(signal.SIGTERM, _interrupt)
  try:
    blocks = page.build_page(predictor, workspace, model_text=model_text, max_pixels=max_pixels)
    page.launch(blocks, workspace, host=host, port=port, block=False)
    print(f'Serving the restore page on http://{host}:{port} (Ctrl-C stops it).', flush=True)
    signal.pause()
  except KeyboardInterrupt:
    pass
  finally:
    if blocks is not None:
      blocks.close()
    workspace.close()
    signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def define_flags():
  """The program's flags (defined when it runs: eval.py's share their names)."""
  flags.DEFINE_string('checkpoint', None, 'Converted checkpoint dir or training workdir.')
  flags.DEFINE_enum('which', 'latest', ['latest', 'best'],
                    'For a training workdir: its latest or best (by PSNR) checkpoint.')
  flags.DEFINE_string('host', page.DEFAULT_HOST, 'Address to listen on: 127.0.0.1 is this '
                      'machine only; 0.0.0.0 lets anyone who reaches it restore photos.')
  flags.DEFINE_integer('port', page.DEFAULT_PORT, 'Port to listen on.', lower_bound=1)
  flags.DEFINE_float('max_megapixels', restore_lib.DEFAULT_MAX_PIXELS / 1e6,
                     'Larger uploads are refused with a message before they are decoded.',
                     lower_bound=0.001)
  flags.DEFINE_enum('backend', 'auto', list(backends.BACKENDS),
                    'How convolutions run (README, Backends).')
  flags.DEFINE_integer('batch_size', restore_lib.DEFAULT_BATCH_SIZE,
                       'Tiles per call (as eval.py).', lower_bound=1)
  flags.DEFINE_integer('local_stats', None, 'Normalise with statistics over a window of this many '
                       'pixels (TLC, as eval.py --local_stats; 0: 384).', lower_bound=0)
  flags.DEFINE_bool('low_memory', False, 'Smaller, slower kernels (as eval.py --low_memory).')


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise errors.InvalidInputError(f'Unexpected arguments: {argv[1:]}')
  if not f.checkpoint:
    raise errors.InvalidInputError('--checkpoint is required (a converted checkpoint or a '
                                   'training workdir).')
  extras.require('gradio', 'serve', 'The restore page')  # One message naming the extra.
  predictor, text = load_predictor(f.checkpoint, which=f.which, backend=f.backend,
                                   batch_size=f.batch_size, local_stats=f.local_stats,
                                   low_memory=f.low_memory)
  serve(predictor, text, host=f.host, port=f.port, max_pixels=int(f.max_megapixels * 1e6))


def run():
  """`hinet-serve` and `python -m hinet_jax.serve`."""
  define_flags()
  runner.run(main)


if __name__ == '__main__':
  run()
