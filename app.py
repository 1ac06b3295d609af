"""The restore page as a Hugging Face Space (Gradio SDK): `python app.py`.

The Space's settings name the checkpoint: HINET_CHECKPOINT (a folder in the Space, a Hub-layout
folder, or a Hub repo id `org/name`; default `checkpoint`). Spaces set GRADIO_SERVER_NAME=0.0.0.0;
elsewhere the page listens on 127.0.0.1. Requirements: `hinet-jax[serve]` (README, Restore page).
"""

import os

os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'  # Nothing is sent out.

from hinet_jax.cli import serve  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == '__main__':
  predictor, text = serve.load_predictor(os.environ.get('HINET_CHECKPOINT', 'checkpoint'))
  serve.serve(predictor, text, host=os.environ.get('GRADIO_SERVER_NAME', '127.0.0.1'),
              port=int(os.environ.get('GRADIO_SERVER_PORT', '7860')),
              max_pixels=int(float(os.environ.get('HINET_MAX_MEGAPIXELS', '100')) * 1e6))
