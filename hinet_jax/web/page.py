"""The restore page: Gradio components around `restoring.restore_uploads`.

Gradio is imported here only (the `serve` extra), after its upload folder is pointed into the
server's `Workspace` and its usage statistics are turned off: nothing leaves the machine.
"""

import os
from typing import Optional

from absl import logging

from hinet_jax import errors
from hinet_jax.web import restoring

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 7860  # Gradio's usual port.
TITLE = 'HINet restore'


def _gradio(workspace: restoring.Workspace):
  """The gradio module, its uploads kept in `workspace` (read when gradio is imported)."""
  os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
  os.environ['GRADIO_TEMP_DIR'] = workspace.uploads
  import gradio as gr  # pylint: disable=g-import-not-at-top
  return gr


def _paths(files) -> list:
  """Gradio's file values (paths, or objects with `.name`) as paths."""
  return [getattr(f, 'name', f) for f in (files or [])]


def _show(results, index):
  """(before, after) of result `index` for the comparison slider."""
  if not results:
    return None
  r = results[min(int(index or 0), len(results) - 1)]
  return r.before_path, r.restored_path


def build_page(predictor, workspace: restoring.Workspace, *, model_text: str,
               max_pixels: Optional[int]):
  """The page as a `gr.Blocks`, restoring with `predictor` one request at a time.

  Args:
    predictor: a `Predictor`.
    workspace: the server's temporary folder (set up before this call imports Gradio).
    model_text: one line naming the model, shown under the title.
    max_pixels: uploads with more pixels are refused before decoding.

  Returns:
    The app; `launch(blocks, ...)` serves it.
  """
  gr = _gradio(workspace)
  sample, sample_clean = restoring.make_sample(workspace.root)

  def restore(uploads, references, tile, overlap, blend, self_ensemble,
              progress=gr.Progress()):
    settings = restoring.Settings(int(tile), int(overlap), blend, bool(self_ensemble))
    report = lambda fraction, text: progress(fraction, desc=text)
    try:
      results = restoring.restore_uploads(
          predictor, _paths(uploads), _paths(references), settings,
          workspace.new_result_dir(), max_pixels=max_pixels, progress=report)
    except errors.UserError as e:
      raise gr.Error(str(e), print_exception=False) from None
    except Exception as e:  # The server keeps serving; the log has the traceback.
      logging.exception('Restoring failed.')
      raise gr.Error(f'Restoring failed ({type(e).__name__}); the server log has the details.',
                     print_exception=False) from None
    choices = [(f'{n + 1}: {r.name}', n) for n, r in enumerate(results)]
    return (_show(results, 0), [r.restored_path for r in results],
            restoring.summary_markdown(results), results,
            gr.update(choices=choices, value=0, visible=len(results) > 1))

  with gr.Blocks(title=TITLE, delete_cache=(restoring.RESULT_MAX_AGE_S,
                                            restoring.RESULT_MAX_AGE_S)) as blocks:
    gr.Markdown(f'# {TITLE}\n{model_text}. Upload photos (PNG, JPEG or TIFF, 8 or 16 bits; up '
                f'to {max_pixels / 1e6:g} megapixels), or try the noisy sample.')
    with gr.Row():
      with gr.Column(scale=1):
        uploads = gr.File(label='Images', file_count='multiple',
                          file_types=list(restoring.UPLOAD_TYPES), elem_id='uploads')
        references = gr.File(label='Clean references (optional, one per image, same order): '
                             'PSNR/SSIM', file_count='multiple',
                             file_types=list(restoring.UPLOAD_TYPES), elem_id='references')
        sample_button = gr.Button('Use the sample photo', elem_id='sample')
        with gr.Accordion('Options', open=False):
          tile = gr.Dropdown(list(restoring.TILE_CHOICES), value=restoring.Settings.tile,
                             label='Tile size (memory grows with it)', elem_id='tile')
          overlap = gr.Slider(0, 63, value=restoring.Settings.overlap, step=1,
                              label='Tile overlap (pixels)', elem_id='overlap')
          blend = gr.Radio(['average', 'smooth'], value='average', label='Tile blending')
          self_ensemble = gr.Checkbox(label='x8 self-ensemble (8 times slower, a little better)',
                                      elem_id='ensemble')
        go = gr.Button('Restore', variant='primary', elem_id='go')
      with gr.Column(scale=2):
        slider = gr.ImageSlider(label='Before / after', type='filepath', format='png',
                                interactive=False, elem_id='result', max_height=800)
        pick = gr.Dropdown(label='Show', choices=[], visible=False, elem_id='pick')
        downloads = gr.File(label='Restored (PNG, the input\'s size and bit depth)',
                            file_count='multiple', interactive=False, elem_id='downloads')
        summary = gr.Markdown(elem_id='summary')
    results = gr.State([])
    sample_button.click(lambda: ([sample], [sample_clean]), None, [uploads, references],
                        api_name=False, queue=False)
    go.click(restore, [uploads, references, tile, overlap, blend, self_ensemble],
             [slider, downloads, summary, results, pick], api_name='restore',
             concurrency_limit=1)
    pick.change(_show, [results, pick], slider, api_name=False, queue=False)
  return blocks


def launch(blocks, workspace: restoring.Workspace, *, host: str = DEFAULT_HOST,
           port: int = DEFAULT_PORT, block: bool = True):
  """Serves the page on host:port, restores queued one at a time (each visitor sees their place).

  Args:
    blocks: `build_page`'s app.
    workspace: its folder, the one the page serves files from.
    host: the address to listen on; 127.0.0.1 is this machine only.
    port: the port.
    block: wait until interrupted (False: return once serving, as tests do).
  """
  blocks.queue(default_concurrency_limit=1)
  return blocks.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                       allowed_paths=[workspace.root], ssr_mode=False, quiet=True,
                       inbrowser=False, share=False)
