r"""Export a HINet checkpoint in one of four formats, each restoring images of any size.

  hinet-export --checkpoint=DIR --output=PATH [--format=savedmodel|stablehlo|onnx|hub] \
      [--which=latest|best] [--dtype=float32|bfloat16] [--license=ID] [--overwrite]

  savedmodel  a TF SavedModel folder (orbax-export / jax2tf; the `export` extra), the default;
  stablehlo   a `jax.export` folder that JAX alone runs on cpu, cuda or tpu (no extra);
  onnx        an .onnx file (opset 17, dynamic batch/height/width; the `onnx` extra);
  hub         the Hugging Face Hub layout: config.json, model.safetensors (official PyTorch names),
              README.md model card (the `hub` extra); --license is required.

DIR is a converted checkpoint (model_config.json + params/) or a training workdir (--which picks
its checkpoint). PATH may be local or gs://...; it is written whole or not at all, and an existing
one is replaced only with --overwrite. bfloat16 (weights and compute) is offered by savedmodel and
stablehlo, bfloat16 weights by hub (half the download; read back as float32); onnx stores float32.
A mistake in a flag or path prints one message and exits with status 2 (--traceback for the
traceback).
"""

from typing import Any, Dict, Optional, Tuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from hinet_jax import api
from hinet_jax import checkpoints
from hinet_jax import files
from hinet_jax import models
from hinet_jax.models import pretrained

FORMATS = ('savedmodel', 'stablehlo', 'onnx', 'hub')
# What each format can store; the first is the default.
FORMAT_DTYPES = {'savedmodel': ('float32', 'bfloat16'), 'stablehlo': ('float32', 'bfloat16'),
                 'onnx': ('float32',), 'hub': ('float32', 'bfloat16')}


def define_flags() -> None:
  """Defines the CLI flags (when run as a program: importing the module adds none)."""
  flags.DEFINE_string('checkpoint', None,
                      'Converted checkpoint dir (model_config.json + params/) or training workdir.')
  flags.DEFINE_enum('which', 'latest', ['latest', 'best'],
                    'For a training workdir: its latest or best checkpoint.')
  flags.DEFINE_string('output', None, 'Folder (an .onnx file for --format=onnx) to write.')
  flags.DEFINE_enum('format', 'savedmodel', list(FORMATS), 'What to write (see above).')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                    'Weights dtype, and compute dtype where the format holds a program: '
                    'bfloat16 for savedmodel, stablehlo and hub (its weights only).')
  flags.DEFINE_string('license', None, 'Licence of the weights for the model card (--format=hub), '
                      'a Hub licence id such as apache-2.0, mit, cc-by-nc-4.0 or other.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output.')
  flags.DEFINE_integer('local_stats', None, 'stablehlo, savedmodel: normalise with statistics '
                       'over a window of this many pixels (TLC, as eval.py --local_stats; 0: 384).',
                       lower_bound=0)
  flags.mark_flags_as_required(['checkpoint', 'output'])


def check_flags(cfg: Any) -> None:
  """Refuses flag combinations a format cannot honour, before anything loads."""
  if cfg.dtype not in FORMAT_DTYPES[cfg.format]:
    raise app.UsageError(f'--dtype={cfg.dtype}: --format={cfg.format} stores '
                         f'{" or ".join(FORMAT_DTYPES[cfg.format])}; pass --dtype=float32.')
  if cfg.format == 'hub' and not cfg.license:
    raise app.UsageError('--format=hub writes a model card that states the licence: pass '
                         '--license=ID (apache-2.0, mit, cc-by-nc-4.0, other, ...).')
  if cfg.local_stats is not None and cfg.format in ('onnx', 'hub'):
    raise app.UsageError(f'--local_stats: --format={cfg.format} cannot hold it (ONNX has no '
                         'windowed norm; the Hub layout stores weights, and local statistics are '
                         'an inference option: pass --local_stats when you load it).')
  if cfg.format == 'onnx' and not cfg.output.endswith('.onnx'):
    raise app.UsageError(f'--output={cfg.output}: --format=onnx writes one file; name it *.onnx.')
  if not files.is_dir(cfg.checkpoint):
    raise app.UsageError(f'--checkpoint={cfg.checkpoint} does not exist or is not a folder.')
  if files.exists(cfg.output) and not cfg.overwrite:
    raise app.UsageError(f'--output={cfg.output} already exists; pass --overwrite to replace it.')


def describe_source(checkpoint: str,
                    which: str) -> Tuple[str, str, Optional[Dict], Optional[Dict]]:
  """`(which step, origin, training config, final metrics)` of a checkpoint, for the model card:
  a workdir's `which` resolved to one step (to load that one, while training may go on), the
  metrics only where final_metrics.json is of that step."""
  if pretrained.is_params_checkpoint(checkpoint):
    return which, (f'Params-only checkpoint `{checkpoint}` (converted from official weights '
                   'with `hinet-convert`, or saved with `save_params`).'), None, None
  step = checkpoints.select_step(checkpoint, which)
  mngr = checkpoints.create_manager(checkpoint, read_only=True)
  try:
    meta = checkpoints.read_meta(mngr, step)
  finally:
    mngr.close()
  final = checkpoints.read_final_metrics(checkpoint)
  metrics = final if final and final.get('step') == step else None
  origin = (f'Trained with hinet-jax: training workdir `{checkpoint}`, step {step} '
            f'(`--which={which}`).')
  return str(step), origin, meta.get('config'), metrics


def export(checkpoint: str, output: str, *, fmt: str, which: str = 'latest',
           dtype: str = 'float32', license_id: Optional[str] = None,
           overwrite: bool = False, local_stats: Optional[int] = None) -> str:
  """Writes the `which` checkpoint of `checkpoint` as `fmt` to `output`.

  Returns:
    The path written (absolute, for a local one).
  """
  # pylint: disable=g-import-not-at-top  # each format imports only its own dependencies
  if fmt == 'hub':  # The card describes the step exported.
    which, origin, training_config, metrics = describe_source(checkpoint, which)
  model, params = api.load_pretrained(checkpoint, which=which, backend='xla')
  window = models.window_of_flag(local_stats)
  if fmt == 'stablehlo':
    from hinet_jax.interop import stablehlo
    return stablehlo.export_stablehlo(model, params, output, dtype=dtype, overwrite=overwrite,
                                      local_stats=window)
  if fmt == 'onnx':
    from hinet_jax.interop import onnx_export
    return onnx_export.export_onnx(model, params, output, overwrite=overwrite)
  if fmt == 'hub':
    from hinet_jax.interop import hub
    config = models.model_config(model)
    card = hub.model_card(config, params, license_id=license_id, origin=origin,
                          training_config=training_config, metrics=metrics, dtype=dtype)
    return hub.save_pretrained(output, config, params, card=card, dtype=dtype,
                               overwrite=overwrite)
  from hinet_jax.interop import export as saved_model
  # pylint: enable=g-import-not-at-top
  if dtype == 'bfloat16':
    model = models.create_model(**dict(models.model_config(model), dtype=dtype, param_dtype=dtype))
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), params)
  if window:
    model = models.with_local_stats(model, window)
  return saved_model.export_saved_model(model, params, output, overwrite=overwrite)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cfg = flags.FLAGS
  check_flags(cfg)
  path = export(cfg.checkpoint, cfg.output, fmt=cfg.format, which=cfg.which, dtype=cfg.dtype,
                license_id=cfg.license, overwrite=cfg.overwrite, local_stats=cfg.local_stats)
  print(f'Exported {cfg.checkpoint} as {cfg.format} ({cfg.dtype}) to {path}.')
