"""The data sources by config: `create_source({'kind': ..., **args})` and the validation sets.

A source is random-access (`__len__`, `__getitem__`) and yields `{'lq', 'gt', 'name'}`; the kinds
live in modules of their own: `paired_files` (any paired folder), `layouts` (the published
datasets' folders), `sidd_mat` (SIDD validation blocks), `demo_set` (no download), `synthetic`
(clean photos, degraded on the fly), `tfds_source`.
Bad input fails with a `hinet_jax.errors.UserError` naming the file and the fix; `on_error='skip'`
turns a pair that fails to read into a logged skip.
"""

import inspect
from typing import Any, Callable, Dict, Mapping

from hinet_jax import errors
from hinet_jax.data import demo_set
from hinet_jax.data import layouts
from hinet_jax.data import paired_files
from hinet_jax.data import sidd_mat
from hinet_jax.data import synthetic
from hinet_jax.data import tfds_source

Source = Any  # Random-access: __len__, and __getitem__ -> {'lq', 'gt', 'name'} (or None: skipped).

_KINDS: Dict[str, Callable[..., Source]] = {
    'folder': paired_files.PairedFolderSource,
    'sidd_medium': layouts.SiddMediumSource,
    'sidd_val': sidd_mat.SiddValidationSource,
    'gopro': layouts.gopro_source,
    'reds': layouts.reds_source,
    'rain13k': layouts.rain13k_source,
    'tfds': tfds_source.TfdsSource,
    'demo': demo_set.DemoSource,
    'photos': synthetic.PhotoFolderSource,
}


def make_source(kind: str, **kwargs: Any) -> Source:
  """Builds a source of `kind` (a key of _KINDS) from that kind's constructor arguments.

  Raises:
    errors.InvalidInputError: unknown kind, unknown or unset arguments; the message says what is
      accepted.
  """
  if kind not in _KINDS:
    raise errors.InvalidInputError(
        f'Unknown data source kind {kind!r}: use one of {", ".join(_KINDS)}')
  fn = _KINDS[kind]
  signature = inspect.signature(fn)
  try:
    signature.bind(**kwargs)
  except TypeError as e:
    raise errors.InvalidInputError(
        f'Bad arguments for source kind {kind!r}: {e}. Accepted: {signature}') from None
  # An unset config placeholder arrives as None; name it instead of failing in os.fspath.
  unset = [name for name, p in signature.parameters.items()
           if p.default is inspect.Parameter.empty and kwargs.get(name) is None]
  if unset:
    raise errors.InvalidInputError(
        f'Source kind {kind!r} needs {", ".join(unset)} (got None): set it in '
        'the data config, e.g. --config.data.train.root=/path/to/data')
  return fn(**kwargs)


def create_source(config: Mapping[str, Any]) -> Source:
  """A source from a dict or ConfigDict of a 'kind' and its arguments: {'kind': 'folder', ...}."""
  kwargs = _as_dict(config)
  return make_source(kwargs.pop('kind'), **kwargs)


def _as_dict(config: Mapping[str, Any]) -> Dict[str, Any]:
  """A plain dict copy of a dict or ConfigDict."""
  return dict(config.to_dict() if hasattr(config, 'to_dict') else config)


def val_set_specs(config: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
  """The source spec of each validation set of a `config.data.val`, by name, in order.

  A plain spec is one set named 'val'. A `sets` field gives one set each: a list of split names
  (each becomes `split`), or a mapping name -> spec whose fields override the outer ones.
  """
  spec = _as_dict(config)
  sets = spec.pop('sets', None)
  if sets is None:
    return {'val': spec}
  if isinstance(sets, (list, tuple)):
    sets = {name: {'split': name} for name in sets}
  elif hasattr(sets, 'items'):
    sets = {name: _as_dict(set_spec) for name, set_spec in sets.items()}
  else:
    raise errors.InvalidInputError(
        f'config.data.val.sets must be a list of split names or a mapping name -> source spec, '
        f'got {sets!r}')
  if not sets:
    raise errors.InvalidInputError(
        'config.data.val.sets is empty: name at least one validation set, or remove the field')
  return {str(name): {**spec, **set_spec} for name, set_spec in sets.items()}


def create_val_sources(config: Mapping[str, Any]) -> Dict[str, Source]:
  """The validation sources of a `config.data.val` by name (`val_set_specs`), in order.

  The official Rain13k training (HINet basicsr/train_rain.py) reports each set's per-image mean
  PSNR and their plain mean over the sets, e.g. `sets=('Test100', 'Rain100H')`.
  """
  return {name: create_source(spec) for name, spec in val_set_specs(config).items()}
