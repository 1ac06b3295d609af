r"""Per-convolution survey: every conv a HINet case runs, each form of it, against PyTorch.

  python bench/conv_shapes.py --variants=0.5x --case=train_b2_128
  python bench/conv_shapes.py --variants=1x --case=fwd256 --impls=xla,native,auto

Collects the convolutions of one forward pass of the model (a hook on `convolution.conv` while
`jax.eval_shape` traces it), merges identical geometries (input shape, kernel, stride, padding), and
times each one alone: the forward (for forward-only cases with the kernel packed beforehand where
the CPU kernels run it, as inference does), and for train cases the backward (input and kernel
gradients) of every `conv_impl` in --impls that can run that shape, and PyTorch's `conv2d` and
`convolution_backward` (oneDNN) on the same shape. JAX and PyTorch run in separate processes pinned
to --threads CPUs (model_speed.py's workers). The totals weight each shape by how often the model
runs it, so they say what a policy would cost on the whole model's convolutions; the `best` column
is the fastest form per shape (what an ideal 'auto' would pick).

Numbers and their use are in bench/README.md (levers log).
"""

import collections
import functools
import json
import sys

from absl import app
from absl import flags

import model_speed  # beside this script: bench/ is sys.path[0] when it runs

# --variants, --threads, --reps and --worker are model_speed.py's flags (imported above).
_CASE = flags.DEFINE_string('case', 'train_b2_128', 'A non-tiled model_speed.py case.')
_IMPLS = flags.DEFINE_list('impls', ['xla', 'matmul', 'winograd', 'native', 'auto'],
                           'conv_impl forms to time (those that cannot run a shape are skipped).')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time PyTorch (oneDNN) on every shape.')


def model_convs(preset, batch, height, width):
  """{(kind, x_shape, kernel_shape, strides, padding): count} of one forward of the preset; kind
  'conv' (`convolution.conv`) or 'up' (the decoder's 2x2 transposed convs, `upconv2x2`)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from hinet_jax.cpu import convolution  # pylint: disable=g-import-not-at-top
  from hinet_jax import models  # pylint: disable=g-import-not-at-top

  seen = collections.Counter()
  conv, upconv = convolution.conv, convolution.upconv2x2

  # The hooks take whatever the model passes (bias, epilogue, ...) and record the geometry only,
  # a join of two inputs (`x2`) as the one input it stands for (the kernel's input channels).
  def conv_hook(x, kernel, strides=1, padding=0, *args, **kwargs):
    xs = (*x.shape[:-1], kernel.shape[2])
    seen[('conv', xs, tuple(kernel.shape), strides, padding)] += 1
    return conv(x, kernel, strides, padding, *args, **kwargs)

  def upconv_hook(x, kernel, *args, **kwargs):
    seen[('up', tuple(x.shape), tuple(kernel.shape), 2, 0)] += 1
    return upconv(x, kernel, *args, **kwargs)

  from hinet_jax import cpu  # pylint: disable=g-import-not-at-top
  model = models.create_model(preset).clone(layers=cpu.LAYERS)
  params = models.abstract_params(model)
  convolution.conv, convolution.upconv2x2 = conv_hook, upconv_hook
  try:
    jax.eval_shape(lambda p, x: model.apply({'params': p}, x), params,
                   jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32))
  finally:
    convolution.conv, convolution.upconv2x2 = conv, upconv
  return seen


def _time_jax_form(kind, x, k, strides, padding, impl, train, reps, rng):
  """{fwd_ms[, bwd_ms]} of one conv form, or None where it cannot run the shape."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from hinet_jax.cpu import convolution  # pylint: disable=g-import-not-at-top

  def fn(x, k, packed=None):
    if kind == 'up':
      return convolution.upconv2x2(x, k, impl, packed=packed)
    return convolution.conv(x, k, strides, padding, impl, packed=packed)

  def pack(x, k):
    if kind == 'up':
      return convolution.pack_for_upconv(x, k, impl)
    return convolution.pack_for_conv(x, k, strides, padding, impl)

  try:
    # Forward-only cases time the forward as inference runs it: the kernel packed beforehand
    # (`cpu.prepare_inference`) where the CPU kernels run it.
    packed = None if train else jax.jit(pack)(x, k)
    fwd = jax.jit(fn)
    y = fwd(x, k, packed).block_until_ready()
  except (ValueError, RuntimeError, TypeError):
    return None  # e.g. 'native' without the kernels built.
  out = {'fwd_ms': 1e3 * model_speed.median_time(
      lambda: fwd(x, k, packed).block_until_ready(), reps)}
  if train:  # The backward alone: XLA drops the forward that jax.vjp traces here.
    g = jax.device_put(rng.standard_normal(y.shape, np.float32))
    bwd = jax.jit(lambda x, k, g: jax.vjp(fn, x, k)[1](g))
    out['bwd_ms'] = 1e3 * model_speed.median_time(
        lambda: jax.block_until_ready(bwd(x, k, g)), reps)
  return out


def worker_jax(spec):
  """Times every impl of every shape; returns rows {shape, impl, fwd_ms, bwd_ms}."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  rows = []
  for kind, xs, ks, s, p, _ in spec['shapes']:
    x = jax.device_put(rng.standard_normal(xs, np.float32))
    k = jax.device_put(rng.standard_normal(ks, np.float32) * 0.05)
    for impl in spec['impls']:
      times = _time_jax_form(kind, x, k, s, p, impl, spec['train'], spec['reps'], rng)
      if times is not None:
        rows.append(dict(shape=[kind, xs, ks, s, p], impl=impl, **times))
  return rows


def worker_torch(spec):
  """PyTorch's forward and backward (both gradients) on every shape, NCHW as its models run."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(spec['threads'])
  rng = np.random.default_rng(0)
  rows = []
  for kind, xs, ks, s, p, _ in spec['shapes']:
    n, h, w, c = xs
    kh, kw, _, o = ks
    x = torch.from_numpy(rng.standard_normal((n, c, h, w), np.float32))
    # torch's weights: (out, in, kh, kw); a transposed conv's: (in, out, kh, kw).
    k = torch.from_numpy(rng.standard_normal(
        (c, o, kh, kw) if kind == 'up' else (o, c, kh, kw), np.float32) * 0.05)
    op = torch.nn.functional.conv_transpose2d if kind == 'up' else torch.nn.functional.conv2d
    # 'torch': NCHW, as eager PyTorch runs HINet; 'torch_nhwc': channels-last, as torch.compile's
    # graph runs it (inductor's layout optimisation hands oneDNN NHWC tensors).
    for impl, layout in (('torch', torch.contiguous_format), ('torch_nhwc', torch.channels_last)):
      xl, kl = x.contiguous(memory_format=layout), k.contiguous(memory_format=layout)
      with torch.no_grad():
        fwd = functools.partial(op, xl, kl, stride=s, padding=p)
        row = dict(shape=[kind, xs, ks, s, p], impl=impl,
                   fwd_ms=1e3 * model_speed.median_time(fwd, spec['reps']))
        if spec['train']:
          g = torch.from_numpy(rng.standard_normal(tuple(fwd().shape), np.float32))
          g = g.contiguous(memory_format=layout)
          bwd = functools.partial(torch.ops.aten.convolution_backward, g, xl, kl, None, (s, s),
                                  (p, p), (1, 1), kind == 'up', (0, 0), 1, (True, True, False))
          row['bwd_ms'] = 1e3 * model_speed.median_time(bwd, spec['reps'])
      rows.append(row)
  return rows


def shape_name(shape):
  kind, xs, ks, s, _ = shape
  name = f'{xs[0]}x{xs[1]}x{xs[2]}x{xs[3]} -> {ks[3]} '
  return name + ('up 2x2' if kind == 'up' else f'k{ks[0]}' + (f' s{s}' if s != 1 else ''))


def main(argv):
  del argv
  if model_speed.serve_as_worker(
      lambda spec: (worker_torch if spec['framework'] == 'torch' else worker_jax)(spec)):
    return
  batch, height, width, train = model_speed.case_shape(_CASE.value)
  threads = model_speed._THREADS.value  # pylint: disable=protected-access
  reps = model_speed._REPS.value  # pylint: disable=protected-access
  for variant in model_speed._VARIANTS.value:  # pylint: disable=protected-access
    preset = model_speed.VARIANT_PRESETS[variant]
    convs = model_convs(preset, batch, height, width)
    shapes = [[kind, list(xs), list(ks), s, p, n]
              for (kind, xs, ks, s, p), n in sorted(convs.items())]
    spec = dict(shapes=shapes, impls=_IMPLS.value, train=train, threads=threads, reps=reps)
    rows = model_speed.spawn(dict(spec, framework='jax'), script=__file__)
    if _TORCH.value:
      rows += model_speed.spawn(dict(spec, framework='torch'), script=__file__)
    if 'error' in rows[0]:
      sys.exit(f'worker failed for {variant}.')
    count = {json.dumps(sh[:5]): sh[5] for sh in shapes}
    table = collections.defaultdict(dict)
    for r in rows:
      table[json.dumps(r['shape'])][r['impl']] = r['fwd_ms'] + r.get('bwd_ms', 0.0)
    impls = [i for i in _IMPLS.value + (['torch', 'torch_nhwc'] if _TORCH.value else [])
             if any(i in t for t in table.values())]
    what = 'forward + backward' if train else 'forward'
    print(f'\n{variant} {_CASE.value}: ms per conv ({what}), n = times the model runs it')
    print('| shape | n | ' + ' | '.join(impls) + ' | best |')
    print('|---|---|' + '---|' * (len(impls) + 1))
    totals = collections.Counter()
    for key, t in table.items():
      jax_forms = {i: v for i, v in t.items() if not i.startswith('torch')}
      best = min(jax_forms, key=jax_forms.get)
      cells = [f'{t[i]:.2f}' if i in t else '-' for i in impls]
      print(f'| {shape_name(json.loads(key))} | {count[key]} | ' + ' | '.join(cells) +
            f' | {best} |')
      for i in impls:
        totals[i] += count[key] * t.get(i, float('nan'))
      totals['best'] += count[key] * jax_forms[best]
    print('| **total** | | ' + ' | '.join(f'{totals[i]:.0f}' for i in impls) +
          f" | {totals['best']:.0f} |")


if __name__ == '__main__':
  app.run(main)
