"""Tests for the restore page (`hinet-serve`): one server per module on a free 127.0.0.1 port with
a tiny HINet, driven by Debian's Chromium through Playwright and by `gradio_client` as a script.

The browser tests skip where Chromium is missing (`apt-get install chromium`), except under
CI=true, where `.ci/run` installs it and they fail instead. Playwright's own browser download is
never used.
"""

import concurrent.futures
import functools
import os
import shutil
import socket

import numpy as np
import pytest

if os.environ.get('CI') != 'true':  # CI installs the `test` extra, which holds `serve`.
  pytest.importorskip('gradio', reason="the page's tests need the serve extra: "
                      "pip install -e '.[serve]'")

from gradio_client import Client, handle_file  # pylint: disable=g-import-not-at-top,wrong-import-position

from hinet_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from hinet_jax.cli import eval as eval_script  # pylint: disable=g-import-not-at-top,wrong-import-position
from hinet_jax.cli import serve  # pylint: disable=g-import-not-at-top,wrong-import-position
from hinet_jax.data import image_ops  # pylint: disable=g-import-not-at-top,wrong-import-position
from hinet_jax.evaluation import restore  # pylint: disable=g-import-not-at-top,wrong-import-position
from hinet_jax.models import pretrained  # pylint: disable=g-import-not-at-top,wrong-import-position
from hinet_jax.web import page  # pylint: disable=g-import-not-at-top,wrong-import-position
from hinet_jax.web import restoring  # pylint: disable=g-import-not-at-top,wrong-import-position
import data_fixtures

MAX_PIXELS = 120_000  # Small, so that an over-limit upload is cheap to make.
TIMEOUT_MS = 60_000


def chromium() -> str:
  """The system Chromium's path; skips (fails under CI=true) without one."""
  path = shutil.which('chromium') or ('/usr/bin/chromium' if os.path.exists('/usr/bin/chromium')
                                      else None)
  if path:
    return path
  if os.environ.get('CI') == 'true':
    pytest.fail('CI=true but no Chromium: .ci/run installs it (apt-get install -y chromium).')
  pytest.skip('Needs Chromium from the OS packages: apt-get install chromium (Debian/Ubuntu).')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def noisy_image(h: int, w: int, seed: int, dtype=np.uint8) -> np.ndarray:
  """A smooth gradient with noise: something to restore."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  clean = np.stack([yy / h, xx / w, 0.5 + 0 * yy], -1)
  x = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)
  return np.round(x * np.iinfo(dtype).max).astype(dtype)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  model = models.HINet(wf=8, depth=3)
  params = data_fixtures.random_params(model)
  path = str(tmp_path_factory.mktemp('serve') / 'tiny')
  pretrained.save_params(path, params, models.model_config(model))
  return path


@pytest.fixture(scope='module')
def server(tiny_checkpoint):
  """(url, predictor, workspace) of a page serving on a free port; stopped after the module."""
  predictor, text = serve.load_predictor(tiny_checkpoint)
  workspace = restoring.Workspace()
  blocks = page.build_page(predictor, workspace, model_text=text, max_pixels=MAX_PIXELS)
  port = free_port()
  page.launch(blocks, workspace, port=port, block=False)
  yield f'http://127.0.0.1:{port}/', predictor, workspace
  blocks.close()
  workspace.close()


def uploaded(tab, name: str):
  """Waits until the page lists `name` as uploaded, with its download link (the name in the list
  is split into stem and extension; while uploading it shows whole, so text is not the signal)."""
  tab.locator(f'#uploads a[download="{name}"]').wait_for()


def eval_py_output(checkpoint: str, path: str, out_dir: str) -> np.ndarray:
  """eval.py's restore mode on one file, in-process: its predictor and `restore_files`."""
  predictor, _ = serve.load_predictor(checkpoint)  # eval.py's loader and restore defaults.
  written = eval_script.restore_files(predictor, [path], out_dir, progress=False)['written']
  return image_ops.read_image(written[0])


def test_restore_file_reports_tiles_and_rounds_as_write_image(server, tmp_path):
  _, predictor, _ = server
  lq = noisy_image(150, 200, 1, np.uint16)
  image_ops.write_image(tmp_path / 'in.png', lq)
  calls = []
  done = restore.restore_file(functools.partial(predictor, tile=128), tmp_path / 'in.png',
                              tmp_path / 'out.png', progress=lambda d, t: calls.append((d, t)))
  assert calls[-1] == (4, 4) and len(calls) == 1  # 4 tiles of 128 in one batch of 8.
  written = image_ops.read_image(tmp_path / 'out.png')
  assert written.dtype == np.uint16 and written.shape == lq.shape
  np.testing.assert_array_equal(written, done.restored)
  # Rounded row of tiles by row of tiles, as the whole float output would be.
  np.testing.assert_array_equal(written, image_ops.quantize(predictor(lq, tile=128), 16))
  with pytest.raises(restore.ImageTooLargeError, match='in.png has 0.0 megapixels'):
    restore.check_size(tmp_path / 'in.png', 1000, 'in.png')


def test_restore_uploads_progress_and_references(server, tmp_path):
  _, predictor, workspace = server
  noisy, clean = (str(tmp_path / f'{n}.png') for n in ('noisy', 'clean'))
  image_ops.write_image(noisy, noisy_image(40, 56, 5))
  image_ops.write_image(clean, noisy_image(40, 56, 6))
  seen = []
  results = restoring.restore_uploads(
      predictor, [noisy, noisy], [clean, clean], restoring.Settings(), workspace.new_result_dir(),
      max_pixels=None, progress=lambda f, text: seen.append(f))
  assert seen == [0.5, 1.0]  # One tile per image.
  assert set(results[0].metrics) == {'psnr', 'ssim', 'psnr_official', 'ssim_official'}
  assert 'PSNR (official)' in restoring.summary_markdown(results)
  with pytest.raises(restoring.errors.InvalidInputError, match='one clean reference per image'):
    restoring.restore_uploads(predictor, [noisy, noisy], [clean], restoring.Settings(), '',
                              max_pixels=None)
  sample = [image_ops.read_image(f) for f in restoring.make_sample(str(tmp_path))]
  assert sample[0].shape == sample[1].shape and np.abs(
      sample[0].astype(int) - sample[1]).mean() > 10  # The built-in photo, noisy and clean.


def test_local_stats_flag_gives_the_page_the_windowed_norm(tmp_path):
  """`hinet-serve --local_stats=16`: the page's predictor restores with TLC's windowed norm."""
  model = models.HINet(wf=8, depth=3)
  params = data_fixtures.random_params(model, std=0.1)  # Large enough for the norm to matter.
  checkpoint = pretrained.save_params(str(tmp_path / 'ckpt'), params, models.model_config(model))
  predictor, text = serve.load_predictor(checkpoint, backend='xla', local_stats=16)
  assert 'local statistics over 16 px' in text
  x = image_ops.to_float32(noisy_image(40, 36, 3))
  local = data_fixtures.restored(models.with_local_stats(model, 16), params, x[None])[0]
  np.testing.assert_allclose(predictor(x, tile=None), local, atol=1e-5)
  assert np.abs(local - data_fixtures.restored(model, params, x[None])[0]).max() > 1e-3


def test_workspace_is_removed_on_close():
  workspace = restoring.Workspace()
  open(os.path.join(workspace.new_result_dir(), 'x.png'), 'wb').close()
  workspace.close()
  assert not os.path.exists(workspace.root)


def test_browser_restores_and_downloads_what_eval_py_writes(server, tiny_checkpoint, tmp_path):
  executable = chromium()
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  url, _, _ = server
  noisy = str(tmp_path / 'noisy.png')
  image_ops.write_image(noisy, noisy_image(90, 120, 2, np.uint16), bit_depth=16)
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=executable, headless=True, args=['--no-sandbox'])
    tab = browser.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    tab.locator('#uploads input[type=file]').set_input_files(noisy)
    uploaded(tab, 'noisy.png')
    tab.click('#go')
    link = tab.locator('#downloads a[download="restored-1.png"]')
    link.wait_for()
    assert tab.locator('#result img').count() == 2  # The before/after comparison.
    with tab.expect_download() as download:
      link.click()
    download.value.save_as(tmp_path / 'downloaded.png')
    browser.close()
  got = image_ops.read_image(tmp_path / 'downloaded.png')
  want = eval_py_output(tiny_checkpoint, noisy, str(tmp_path / 'eval_out'))
  assert got.dtype == np.uint16 and got.shape == (90, 120, 3)
  # The same function and compiled program on the same machine: the same bits.
  np.testing.assert_array_equal(got, want)


def test_browser_shows_the_error_of_a_broken_file(server, tmp_path):
  executable = chromium()
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  url, _, _ = server
  broken = tmp_path / 'broken.png'
  broken.write_bytes(image_ops.encode_png(noisy_image(32, 32, 3))[:60])  # Truncated.
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=executable, headless=True, args=['--no-sandbox'])
    tab = browser.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    tab.locator('#uploads input[type=file]').set_input_files(str(broken))
    uploaded(tab, 'broken.png')
    tab.click('#go')
    tab.get_by_text('broken.png could not be read').first.wait_for()
    browser.close()


def test_gradio_client_restores_queues_and_refuses_bad_files(server, tmp_path):
  url, predictor, _ = server
  client = Client(url, verbose=False, download_files=str(tmp_path / 'client'))
  args = lambda path, tile=128: ([handle_file(str(path))], None, tile, 32, 'average', False)
  photo = tmp_path / 'photo.jpg'
  image_ops.write_image(photo, noisy_image(100, 140, 4))
  _, files, summary, _ = client.predict(*args(photo), api_name='/restore')
  want = restore.restore_file(functools.partial(predictor, tile=128), photo,
                              tmp_path / 'want.png').restored
  np.testing.assert_array_equal(image_ops.read_image(files[0]), want)
  assert '140x100' in summary
  # Five visitors at once: one restore at a time, every one answered.
  with concurrent.futures.ThreadPoolExecutor(5) as pool:
    jobs = [client.submit(*args(photo, 256), api_name='/restore') for _ in range(5)]
    outs = list(pool.map(lambda job: job.result(timeout=TIMEOUT_MS / 1000), jobs))
  assert all(len(o[1]) == 1 for o in outs)
  # Bad input: one message each, and the server goes on serving.
  (tmp_path / 'empty.png').write_bytes(b'')
  (tmp_path / 'notes.png').write_text('not an image')
  image_ops.write_image(tmp_path / 'huge.png', np.zeros((400, 400, 3), np.uint8))
  for name, message in (('empty.png', 'could not be read'), ('notes.png', 'could not be read'),
                        ('huge.png', 'more than the limit of 0.12')):
    with pytest.raises(Exception, match=f'{name}.*{message}'):
      client.predict(*args(tmp_path / name), api_name='/restore')
  assert len(client.predict(*args(photo), api_name='/restore')[1]) == 1
