r"""A denoiser against the classical ones on photos it never saw: noisy / NLM / BM3D / model.

  pip install bm3d==4.0.3
  python bench/bm3d_compare.py --workdir=/tmp/hinet_photos --photos=/photos/test \
      --sigmas=15,25,50 --json=/tmp/bm3d.json --panel=/tmp/bm3d_panel.png
  python bench/bm3d_compare.py --workdir=/tmp/hinet_photos --which=2000 ... \
      --baselines=/tmp/bm3d.json   # another checkpoint: NLM and BM3D rows reused

Each photo gets seeded Gaussian noise per sigma (0-255 scale, the generator seeded by (--seed,
photo index, sigma), rounded and clipped to 8 bits as a saved photo). Non-local means
(scikit-image, fast mode, 5x5 patches, 13x13 window, h = 0.8 sigma) and BM3D (`bm3d.bm3d_rgb`)
are both given the true sigma; the model restores the whole photo. PSNR/SSIM on the 8-bit
outputs (`evaluation.metrics`, RGB, no border crop). Prints a Markdown table.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np

from hinet_jax import checkpoints
from hinet_jax import models
from hinet_jax.data import image_ops
from hinet_jax.data import paired_files
from hinet_jax.evaluation import inference
from hinet_jax.evaluation import metrics

_WORKDIR = flags.DEFINE_string('workdir', None, 'The model: a training workdir or checkpoint.')
_PHOTOS = flags.DEFINE_string('photos', None, 'A folder of clean test photos.')
_SIGMAS = flags.DEFINE_list('sigmas', ['15', '25', '50'], 'Noise sigmas, 0-255 scale.')
_SEED = flags.DEFINE_integer('seed', 0, 'Noise seed.')
_WHICH = flags.DEFINE_string('which', 'latest', "A workdir's checkpoint: latest, best or a step.")
_BASELINES = flags.DEFINE_string('baselines', None, 'A JSON of an earlier run with the same '
                                 'photos, sigmas and seed: its noisy, NLM and BM3D scores are '
                                 'reused and only the model runs.')
_JSON = flags.DEFINE_string('json', None, 'Write the rows here.')
_PANEL = flags.DEFINE_string('panel', None, 'Write noisy | BM3D | model | clean of the first '
                             'photo at the middle sigma here (PNG).')
_PANEL_CROP = flags.DEFINE_integer('panel_crop', None, 'The panel shows this square from the '
                                   "photo's centre (None: the whole photo).")


def add_noise(clean: np.ndarray, sigma: float, seed) -> np.ndarray:
  rng = np.random.default_rng(seed)
  noisy = clean.astype(np.float32) + rng.normal(0.0, sigma, clean.shape).astype(np.float32)
  return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def nlm(noisy: np.ndarray, sigma: float) -> np.ndarray:
  from skimage import restoration  # pylint: disable=g-import-not-at-top
  s = sigma / 255
  return restoration.denoise_nl_means(noisy, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5,
                                      patch_distance=6, channel_axis=-1)


def bm3d_rgb(noisy: np.ndarray, sigma: float) -> np.ndarray:
  import bm3d  # pylint: disable=g-import-not-at-top
  return np.asarray(bm3d.bm3d_rgb(noisy, sigma / 255), np.float32)


def scores(out: np.ndarray, clean: np.ndarray):
  kw = dict(data_range=1.0, quantize=True)
  return float(metrics.psnr(out, clean, **kw)), float(metrics.ssim(out, clean, **kw))


def centre(x: np.ndarray, side) -> np.ndarray:
  if side is None:
    return x
  top, left = max(0, (x.shape[0] - side) // 2), max(0, (x.shape[1] - side) // 2)
  return x[top:top + side, left:left + side]


def main(_):
  which = int(_WHICH.value) if _WHICH.value.isdigit() else _WHICH.value
  model_config, params = checkpoints.load(_WORKDIR.value, which)
  forward = inference.Forward(models.create_model(**model_config))
  baselines = {}
  if _BASELINES.value:
    with open(_BASELINES.value) as f:
      baselines = {(r['photo'], r['sigma']): r for r in json.load(f)}
  methods = [('nlm', nlm), ('bm3d', bm3d_rgb),
             ('model', lambda x, s: np.asarray(forward(params, x[None]))[0])]
  rows = []
  panel = None
  for i, (name, path) in enumerate(paired_files.list_images(_PHOTOS.value).items()):
    clean8 = image_ops.to_rgb(image_ops.read_image(path))
    clean = image_ops.to_float32(clean8)
    for sigma in map(float, _SIGMAS.value):
      noisy = image_ops.to_float32(add_noise(clean8, sigma, [_SEED.value, i, int(sigma)]))
      earlier = baselines.get((name, sigma))
      outs, secs = {'noisy': noisy}, {}
      for method, fn in methods:
        if earlier is not None and method != 'model':
          continue
        start = time.perf_counter()
        outs[method] = fn(noisy, sigma)
        secs[method] = time.perf_counter() - start
      row = dict(photo=name, sigma=sigma, hw=list(clean.shape[:2]), sec=secs, which=_WHICH.value)
      if earlier is not None:
        row.update({k: v for k, v in earlier.items()
                    if k.split('_')[0] in ('noisy', 'nlm', 'bm3d')})
        row['sec'] = {**earlier['sec'], **secs}
      for method, out in outs.items():
        row[f'{method}_psnr'], row[f'{method}_ssim'] = scores(out, clean)
      rows.append(row)
      print(json.dumps(row), flush=True)
      if panel is None and 'bm3d' in outs and \
          sigma == float(_SIGMAS.value[len(_SIGMAS.value) // 2]):
        panel = np.concatenate([centre(x, _PANEL_CROP.value) for x in
                                (noisy, outs['bm3d'], outs['model'], clean)], axis=1)
  print('| photo | sigma | noisy | NLM | BM3D | this model |\n|---|---|---|---|---|---|')
  for r in rows:
    cells = [f'{r[m + "_psnr"]:.2f} / {r[m + "_ssim"]:.3f}' for m in
             ('noisy', 'nlm', 'bm3d', 'model')]
    print(f'| {r["photo"]} | {r["sigma"]:g} | ' + ' | '.join(cells) + ' |')
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(rows, f, indent=1)
  if _PANEL.value and panel is not None:
    image_ops.write_image(_PANEL.value, np.clip(panel, 0, 1))


if __name__ == '__main__':
  flags.mark_flags_as_required(['workdir', 'photos'])
  app.run(main)
