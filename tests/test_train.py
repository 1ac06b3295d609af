"""The train step and loop in-process on 8 simulated CPU devices (tests/conftest.py)."""

import dataclasses
import functools
import os
import sys
from unittest import mock

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from hinet_jax import backends
from hinet_jax import models
from hinet_jax.configs import tiny as tiny_config
from hinet_jax.data import datasets
from hinet_jax.data import input_pipeline
from hinet_jax.train import config_checks
from hinet_jax.train import loop
from hinet_jax.train import preemption
from hinet_jax.train import sharding
from hinet_jax.train import step as step_lib
from test_no_recompile import count_compiles

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(devices, config, skip_by_cond=None):
  """Mesh, state and compiled step over `devices` for `config`, on the config's backend."""
  mesh = sharding.create_mesh(devices)
  backend = backends.resolve(config.backend)
  model = backend.build(models.create_model(**config.model))
  lr_fn = step_lib.create_learning_rate_fn(config)
  tx = step_lib.create_optimizer(config, lr_fn)
  state, _, shardings = step_lib.init_state(model, tx, mesh, config.seed)
  if skip_by_cond is None:
    skip_by_cond = backend.skip_step_by_cond
  return mesh, state, step_lib.make_train_step(config, lr_fn, shardings, mesh,
                                               skip_by_cond=skip_by_cond)


def _batches(n, batch_size=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    gt = rng.random((batch_size, size, size, 3), np.float32)
    lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    out.append({'lq': lq, 'gt': gt})
  return out


def _run(config, step_fn, train_iter, in_flight=1):
  """A `loop.Run` without checkpoints, writer output or validation."""
  backend = dataclasses.replace(backends.resolve('xla'), calls_in_flight=in_flight)
  return loop.Run(config=config, workdir='/nonexistent', backend=backend, mngr=None,
                  writer=_NullWriter(), train_iter=train_iter, step_fn=step_fn, hooks=[])


class TrainStepTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = tiny_config.get_config()
    cls.mesh, cls.state0, step_fn = _setup(jax.devices(), cls.config)
    cls.step_fn = staticmethod(step_fn)  # A jitted function is a descriptor: keep it unbound.

  def _put(self, batch, mesh=None):
    return sharding.put_batch(batch, sharding.batch_sharding(mesh or self.mesh))

  def test_one_and_eight_devices_give_the_same_losses(self):
    self.assertEqual(jax.device_count(), 8)
    batches = _batches(3)
    losses = {}
    one_device = _setup(jax.devices()[:1], self.config)
    eight_devices = (self.mesh, jax.tree.map(jnp.copy, self.state0), self.step_fn)
    for n, (mesh, state, step_fn) in ((1, one_device), (8, eight_devices)):
      losses[n] = []
      for b in batches:
        state, m = step_fn(state, self._put(b, mesh))
        losses[n].append(step_lib.compute_metrics(m)['loss'])
    np.testing.assert_allclose(losses[1], losses[8], rtol=2e-5)
    self.assertLess(losses[8][-1], losses[8][0])

  def test_nonfinite_step_is_skipped_counted_and_left_out_of_the_averages(self):
    state = jax.tree.map(jnp.copy, self.state0)  # The step donates its input.
    good, = _batches(1)
    state, first = self.step_fn(state, self._put(good))
    before = jax.device_get((state.params, state.opt_state))
    bad = dict(good, lq=np.full_like(good['lq'], np.nan))
    period = first
    for i in range(2):
      state, m = self.step_fn(state, self._put(bad))
      self.assertEqual(step_lib.compute_metrics(m)['nonfinite_streak'], i + 1)
      period = period.merge(m)
    after = jax.device_get((state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    self.assertEqual(int(state.step), 3)
    state, last = self.step_fn(state, self._put(good))
    period = step_lib.compute_metrics(period.merge(last))
    last, first = step_lib.compute_metrics(last), step_lib.compute_metrics(first)
    self.assertEqual(last['nonfinite_streak'], 0)
    self.assertEqual(last['skipped_steps'], 2)
    self.assertTrue(np.isfinite(last['loss']))
    # The period's means are over the two applied steps; the counters and lr are the last step's.
    self.assertAlmostEqual(period['loss'], (first['loss'] + last['loss']) / 2, places=5)
    self.assertEqual(period['skipped_steps'], 2)
    self.assertEqual(period['lr'], last['lr'])

  def test_skipping_by_cond_or_by_select_gives_the_same_state(self):
    """The two forms of skipping a non-finite step (`_update_if_finite`): the update where the
    step is finite (to float rounding: XLA fuses them differently), the old state where not."""
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1e-3, p.shape), p.dtype),
                         self.state0.params)
    update = step_lib._update_if_finite  # pylint: disable=protected-access
    forms = {c: jax.jit(functools.partial(update, by_cond=c)) for c in (True, False)}
    for finite in (True, False):
      by = {c: form(self.state0, grads, optax.tree.norm(grads), jnp.asarray(finite))
            for c, form in forms.items()}
      jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-9),
                   by[True], by[False])
      if not finite:
        jax.tree.map(np.testing.assert_array_equal, by[True],
                     (self.state0.params, self.state0.opt_state))

  def test_skip_by_cond_updates_the_optimizer_state_in_place_on_cpu(self):
    """What `Backend.skip_step_by_cond` is for: with selects, XLA:CPU copies every optimizer
    moment at the start of each step (bench/README.md). Seen in the executable's memory: updated
    in place (the state donated), the update needs only scalars beside the state, where the
    select form's temporaries hold a copy of the whole optimizer state."""
    self.assertTrue(backends.resolve('xla').skip_step_by_cond)  # The tests run on CPU.
    grads = jax.tree.map(lambda p: p * 1e-3, self.state0.params)
    update_if_finite = step_lib._update_if_finite  # pylint: disable=protected-access
    update = jax.jit(functools.partial(update_if_finite, by_cond=True), donate_argnums=0)
    memory = update.lower(self.state0, grads, optax.tree.norm(grads),
                          jnp.asarray(True)).compile().memory_analysis()
    # Bytes per device (the state is replicated; the memory analysis is one device's).
    moments = sum(a.addressable_shards[0].data.nbytes for a in jax.tree.leaves(
        self.state0.opt_state))
    self.assertGreaterEqual(memory.alias_size_in_bytes, moments)  # Donated: updated in place.
    self.assertLess(memory.temp_size_in_bytes, moments / 10)

  def test_step_compiles_once(self):
    """Batches after the first reuse the step's executable: no backend compile (jax.monitoring)."""
    state = jax.tree.map(jnp.copy, self.state0)
    first, *rest = _batches(4, seed=3)
    state, m = self.step_fn(state, self._put(first))
    step_lib.compute_metrics(m)
    with count_compiles() as compiles:
      for b in rest:
        state, m = self.step_fn(state, self._put(b))
        step_lib.compute_metrics(m)
    self.assertEqual(compiles[0], 0)

  def test_loss_falls_on_demo_data(self):
    state = jax.tree.map(jnp.copy, self.state0)
    source = datasets.create_source(self.config.data.train)
    it = input_pipeline.create_train_iter(
        source, batch_size=8, crop_size=32, augment='dihedral', seed=0, num_threads=1,
        prefetch=2, data_sharding=sharding.batch_sharding(self.mesh))
    losses = []
    for _ in range(24):
      state, m = self.step_fn(state, next(it))
      losses.append(step_lib.compute_metrics(m)['loss'])
    it.close()
    self.assertLess(np.mean(losses[-4:]), np.mean(losses[:4]) - 1.0)  # > 1 dB better (PSNR loss).

  def test_loop_stops_after_consecutive_nonfinite_steps(self):
    config = tiny_config.get_config()
    config.train.max_consecutive_nonfinite = 3
    bad = dict(_batches(1)[0])
    bad['lq'] = np.full_like(bad['lq'], np.inf)
    run = _run(config, self.step_fn, iter(lambda: self._put(bad), None))
    state = jax.tree.map(jnp.copy, self.state0)
    with self.assertRaisesRegex(FloatingPointError, r'3 consecutive .* step 3'):
      loop.train_loop(run, state, 0, preemption.StopSignal())

  @parameterized.parameters(1, 2, 3)
  def test_loop_keeps_the_backends_steps_in_flight(self, in_flight):
    """When a step is dispatched, at most `calls_in_flight - 1` earlier ones are not fetched (on
    CPU none: XLA:CPU would allocate its temporaries beside the running step's), in order."""
    config = tiny_config.get_config()
    config.num_train_steps, config.log_every_steps = 7, 100
    state = jax.tree.map(jnp.copy, self.state0)
    _, metrics = self.step_fn(state, self._put(_batches(1)[0]))
    metrics = jax.device_get(metrics)
    unfetched, most, dispatched, fetched = [0], [0], [0], []

    class Streak:  # A step's streak: counts when the loop fetches it (`jax.device_get`).

      def __init__(self, step):
        self.step = step

      def __array__(self, dtype=None, copy=None):
        unfetched[0] -= 1
        fetched.append(self.step)
        return np.zeros((), dtype or np.int32)

    def step_fn(state, batch):
      del batch
      most[0] = max(most[0], unfetched[0])
      unfetched[0] += 1
      dispatched[0] += 1
      streak = metrics.nonfinite_streak.replace(total=Streak(dispatched[0]))
      return state, metrics.replace(nonfinite_streak=streak)

    run = _run(config, step_fn, iter(lambda: None, 0), in_flight)
    _, step = loop.train_loop(run, None, 0, preemption.StopSignal())
    self.assertEqual(step, 7)
    self.assertEqual(most[0], in_flight - 1)
    self.assertEqual(unfetched[0], 0)
    self.assertEqual(fetched, list(range(1, 8)))

  def test_global_batch_must_divide_over_devices(self):
    with self.assertRaisesRegex(
        ValueError, r'config.batch_size=12 \(the global batch\) must be a positive multiple.*\(8\)'):
      sharding.per_process_batch_size(12, self.mesh)


class GradAccumTest(parameterized.TestCase):
  """`config.grad_accum_steps`: k micro-batches of B / k make the update of one batch of B."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    devices = jax.devices()[:2]  # 2 devices: batch 8 is 4 rows each, 4 micro-batches of 1 each.
    cls.configs, cls.setups = {}, {}
    for k in (1, 4):
      config = tiny_config.get_config()
      config.grad_accum_steps = k
      # Adam's first update is lr * g / (|g| + eps): with the default eps it is lr * sign(g), and
      # gradients that vanish in exact arithmetic (biases before instance norm) are rounding noise
      # whose sign differs between any two summation orders. A large eps keeps the update
      # proportional to the gradient, so the comparison sees the accumulation, not that noise.
      config.optim.eps = 1.0
      cls.configs[k] = config
      cls.setups[k] = _setup(devices, config)
    cls.batch = _batches(1)[0]

  def _put(self, batch, k):
    return sharding.put_batch(batch, sharding.batch_sharding(self.setups[k][0]))

  def test_split_keeps_every_micro_batch_on_all_devices(self):
    rows = np.arange(8)
    split = step_lib.split_micro_batches({'x': rows}, num_micro=2, num_shards=2)['x']
    np.testing.assert_array_equal(split, [[0, 1, 4, 5], [2, 3, 6, 7]])
    one_shard = step_lib.split_micro_batches({'x': rows}, num_micro=4, num_shards=1)['x']
    np.testing.assert_array_equal(one_shard, rows.reshape(4, 2))

  def test_four_micro_batches_of_two_make_the_update_of_one_batch_of_eight(self):
    results = {}
    for k, (_, state, step_fn) in self.setups.items():
      state = jax.tree.map(jnp.copy, state)  # The step donates its input.
      before = jax.device_get(state.params)
      batch = self._put(self.batch, k)
      # Each device slicing its own rows (no batch data crossing devices) is speed:
      # test_split_keeps_every_micro_batch_on_all_devices pins the layout, bench/train_step.py
      # --config.grad_accum_steps=4 times it.
      state, metrics = step_fn(state, batch)
      updates = jax.tree.map(np.subtract, jax.device_get(state.params), before)
      results[k] = (updates, step_lib.compute_metrics(metrics), int(state.step))
    (whole, whole_metrics, whole_step), (accum, accum_metrics, accum_step) = results[1], results[4]
    self.assertEqual(whole_step, accum_step)  # The step counts updates: one each.
    self.assertGreater(whole_metrics['grad_norm'], self.configs[1].optim.grad_clip_norm)
    for name in ('loss', 'loss_stage1', 'loss_stage2', 'psnr', 'grad_norm', 'param_norm'):
      self.assertAlmostEqual(accum_metrics[name], whole_metrics[name], delta=1e-5 *
                             abs(whole_metrics[name]), msg=name)
    # The clip scales the mean gradient, so the updates agree too (clipping each micro-batch's
    # gradient would not: their norms differ from the mean's).
    largest = max(np.abs(u).max() for u in jax.tree.leaves(whole))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-4 * largest),
                 accum, whole)

  def test_one_nonfinite_micro_batch_skips_the_whole_update(self):
    _, state, step_fn = self.setups[4]  # Skips by `lax.cond`, as on CPU (the select form's
    state = jax.tree.map(jnp.copy, state)  # skip does not depend on accumulation).
    before = jax.device_get((state.params, state.opt_state))
    bad = {key: value.copy() for key, value in self.batch.items()}
    bad['lq'][6] = np.nan  # One row of one micro-batch (the third, on the second device).
    state, metrics = step_fn(state, self._put(bad, 4))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get((state.params, state.opt_state)),
                 before)
    metrics = step_lib.compute_metrics(metrics)
    self.assertEqual((metrics['skipped_steps'], metrics['nonfinite_streak']), (1, 1))
    self.assertEqual(int(state.step), 1)

  def test_grad_accum_steps_must_divide_the_batch_of_each_device(self):
    config = tiny_config.get_config()  # Batch 8 on the 8 test devices: 1 per device.
    config.grad_accum_steps = 2
    with self.assertRaisesRegex(
        ValueError, r'config.grad_accum_steps=2 must divide .* config.batch_size=8 over 8 '
        r'device\(s\) is 1 per device. Use --config.grad_accum_steps= one of \[1\], or '
        r'--config.batch_size= a multiple of 16'):
      config_checks.validate_config(config)
    step_lib.check_grad_accum_steps(64, 1, 8)  # The official batch on one GPU.
    with self.assertRaisesRegex(ValueError, r'grad_accum_steps=0 must divide'):
      step_lib.check_grad_accum_steps(64, 8, 0)


class _NullWriter:

  def write_scalars(self, step, scalars):
    pass


class ConfigTest(absltest.TestCase):

  def _parse(self, *args):
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, 'config', flag_values=fv, lock_config=True)
    argv = ['train.py', *args]
    with mock.patch.object(sys, 'argv', argv):  # config_flags reads overrides from sys.argv.
      fv(argv)
    return fv.config

  def test_all_configs_load_and_validate(self):
    for name in ('sidd.py', 'sidd.py:0.5x', 'gopro.py', 'reds.py', 'rain13k.py', 'custom.py',
                 'demo.py', 'tiny.py'):
      config = self._parse(f'--config={REPO}/configs/{name}')
      self.assertEqual(config.batch_size % 8, 0, name)
      self.assertEqual(config.backend, 'auto', name)
      self.assertNotIn('conv_impl', config.model, name)
    self.assertEqual(self._parse(f'--config={REPO}/configs/sidd.py:0.5x').model.wf, 32)
    self.assertEqual(self._parse(f'--config={REPO}/configs/sidd.py').model.wf, 64)

  def test_overrides_work_and_typos_fail(self):
    config = self._parse(f'--config={REPO}/configs/custom.py', '--config.batch_size=16',
                         '--config.optim.learning_rate=1e-3', '--config.model.dtype=bfloat16',
                         '--config.data.train_dir=/data/train', '--config.backend=xla')
    self.assertEqual(config.batch_size, 16)
    self.assertEqual(config.optim.learning_rate, 1e-3)
    self.assertEqual(config.data.train.root, '/data/train')  # Linked to data.train_dir.
    self.assertEqual(config.backend, 'xla')
    self.assertEqual(models.create_model(**config.model).dtype, jnp.bfloat16)
    with self.assertRaises(Exception):
      self._parse(f'--config={REPO}/configs/demo.py', '--config.bach_size=16')
    with self.assertRaises(Exception):
      self._parse(f'--config={REPO}/configs/demo.py', '--config.batch_size=abc')
    with self.assertRaisesRegex(Exception, 'Unknown SIDD variant'):
      self._parse(f'--config={REPO}/configs/sidd.py:2x')

  def test_unset_data_paths_and_unknown_backends_are_named(self):
    config = self._parse(f'--config={REPO}/configs/custom.py')
    with self.assertRaisesRegex(ValueError, r'config.data.train.root .* --config.data.train_dir'):
      config_checks.validate_config(config)
    config = self._parse(f'--config={REPO}/configs/tiny.py', '--config.backend=gpu')
    with self.assertRaisesRegex(ValueError, r"config.backend='gpu': choose one of auto, xla, cpu"):
      config_checks.validate_config(config)


if __name__ == '__main__':
  absltest.main()
