"""Time and peak memory of one large photo through the restore page, as a visitor sends it.

  python bench/page_memory.py --model=demo --megapixels=24
  python bench/page_memory.py --model=sidd-1x --megapixels=24 --out=bench/results/page.jsonl

Starts `hinet-serve` in its own process on a free 127.0.0.1 port with random weights of the
model's shape (time and memory do not depend on the values), sends one noisy 8-bit 3:2 JPEG of
the given size through `gradio_client`, and prints one JSON row: the restore's wall time, the
server's RSS after loading and its peak (`VmHWM`), and how many progress updates the client saw.
Needs the `serve` extra.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from hinet_jax import models
from hinet_jax.configs import demo as demo_config
from hinet_jax.data import image_ops
from hinet_jax.models import pretrained

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'demo', "'demo' (configs/demo.py's model) or a preset (sidd-1x, ...).")
flags.DEFINE_float('megapixels', 24.0, 'Photo size; 3:2 (24 -> 6000x4000).')
flags.DEFINE_integer('tile', 256, 'Tile size chosen on the page.')
flags.DEFINE_integer('overlap', 32, 'Tile overlap chosen on the page.')
flags.DEFINE_string('out', None, 'Also append the row to this .jsonl file.')


def _model():
  if FLAGS.model == 'demo':
    return models.create_model(**demo_config.get_config().model)
  return models.create_model(FLAGS.model)


def _rss_mb(pid: int) -> dict:
  with open(f'/proc/{pid}/status') as f:
    fields = dict(line.split(':', 1) for line in f)
  return {k: int(fields[k].split()[0]) / 1024 for k in ('VmRSS', 'VmHWM')}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _photo(path: str, megapixels: float) -> tuple:
  w = int(round((megapixels * 1e6 * 1.5) ** 0.5))
  h = int(round(w / 1.5))
  rng = np.random.default_rng(0)
  yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
  xx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
  for r in range(0, h, 500):  # Band by band: the photo, not this script, is measured.
    rows = yy[r:r + 500]
    band = np.concatenate([np.broadcast_to(rows, (len(rows), w, 1)),
                           np.broadcast_to(xx, (len(rows), w, 1)),
                           np.full((len(rows), w, 1), 0.5, np.float32)], -1)
    band = band + rng.normal(0, 0.1, band.shape).astype(np.float32)
    if r == 0:
      image = np.empty((h, w, 3), np.uint8)
    image[r:r + 500] = image_ops.quantize(band, 8)
  image_ops.write_image(path, image)
  return h, w


def main(argv):
  del argv
  from gradio_client import Client, handle_file  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix='page_memory_')
  model = _model()
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(0, 0.05, a.shape).astype(np.float32),
                        models.abstract_params(model))
  ckpt = pretrained.save_params(os.path.join(tmp, 'ckpt'), params, models.model_config(model))
  del params
  photo = os.path.join(tmp, 'photo.jpg')
  h, w = _photo(photo, FLAGS.megapixels)
  port = _free_port()
  server = subprocess.Popen([sys.executable, '-m', 'hinet_jax.serve', f'--checkpoint={ckpt}',
                             f'--port={port}', '--max_megapixels=200'],
                            stderr=open(os.path.join(tmp, 'server.log'), 'w'))
  try:
    url = f'http://127.0.0.1:{port}/'
    for _ in range(600):
      try:
        client = Client(url, verbose=False, download_files=os.path.join(tmp, 'client'))
        break
      except Exception:  # pylint: disable=broad-except  (not listening yet)
        if server.poll() is not None:
          raise RuntimeError(f'hinet-serve exited; see {tmp}/server.log') from None
        time.sleep(1)
    loaded = _rss_mb(server.pid)
    start = time.perf_counter()
    job = client.submit([handle_file(photo)], None, FLAGS.tile, FLAGS.overlap, 'average', False,
                        api_name='/restore')
    updates = set()
    while not job.done():
      status = job.status()
      if status.progress_data:
        updates.add(tuple((p.progress, p.desc) for p in status.progress_data))
      time.sleep(0.5)
    job.result()
    seconds = time.perf_counter() - start
    peak = _rss_mb(server.pid)
  finally:
    server.terminate()
    server.wait(60)
  row = dict(model=FLAGS.model, params=models.count_params(models.abstract_params(model)),
             photo=f'{w}x{h}', megapixels=round(h * w / 1e6, 2), tile=FLAGS.tile,
             overlap=FLAGS.overlap, seconds=round(seconds, 1),
             rss_after_loading_mb=round(loaded['VmRSS']), peak_rss_mb=round(peak['VmHWM']),
             progress_updates_seen=len(updates), date=time.strftime('%Y-%m-%d'),
             malloc=('glibc default' if os.environ.get('HINET_JAX_KEEP_FREED_MEMORY') == '0'
                     else 'keep freed'))
  print(json.dumps(row))
  if FLAGS.out:
    with open(FLAGS.out, 'a') as f:
      f.write(json.dumps(row) + '\n')


if __name__ == '__main__':
  app.run(main)
