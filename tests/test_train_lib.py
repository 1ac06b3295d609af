"""The train step and loop in-process on 8 simulated CPU devices (tests/conftest.py)."""

import functools
import os
import re
import sys
from unittest import mock

from absl import flags
from absl.testing import absltest
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from configs import tiny as tiny_config
from hinet_jax.data import datasets
from hinet_jax.data import input_pipeline
from hinet_jax import models
from hinet_jax.train import sharding
from hinet_jax.train import train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup(devices, config):
  """Mesh, state and compiled step over `devices` for `config`."""
  mesh = sharding.create_mesh(devices)
  model = models.create_model(**config.model)
  lr_fn = train_lib.create_learning_rate_fn(config)
  tx = train_lib.create_optimizer(config, lr_fn)
  state, _, shardings = train_lib.init_state(model, tx, mesh, config.seed)
  return mesh, state, train_lib.make_train_step(config, lr_fn, shardings, mesh)


def _batches(n, batch_size=8, size=32, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    gt = rng.random((batch_size, size, size, 3), np.float32)
    lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
    out.append({'lq': lq, 'gt': gt})
  return out


class TrainStepTest(absltest.TestCase):

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
        losses[n].append(float(m['loss']))
    np.testing.assert_allclose(losses[1], losses[8], rtol=2e-5)
    self.assertLess(losses[8][-1], losses[8][0])

  def test_nonfinite_step_is_skipped_and_counted(self):
    state = jax.tree.map(jnp.copy, self.state0)  # The step donates its input.
    good, = _batches(1)
    state, _ = self.step_fn(state, self._put(good))
    before = jax.device_get((state.params, state.opt_state))
    bad = dict(good, lq=np.full_like(good['lq'], np.nan))
    for i in range(2):
      state, m = self.step_fn(state, self._put(bad))
      self.assertEqual(int(m['nonfinite_streak']), i + 1)
      self.assertEqual(float(m['finite']), 0.0)
    after = jax.device_get((state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    self.assertEqual(int(state.step), 3)
    state, m = self.step_fn(state, self._put(good))
    self.assertEqual(int(m['nonfinite_streak']), 0)
    self.assertEqual(int(m['skipped_steps']), 2)
    self.assertTrue(np.isfinite(float(m['loss'])))

  def test_skipping_by_cond_or_by_select_gives_the_same_state(self):
    """The two forms of skipping a non-finite step (`_update_if_finite`): the update where the
    step is finite (to float rounding: XLA fuses them differently), the old state where not."""
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1e-3, p.shape), p.dtype),
                         self.state0.params)
    for finite in (True, False):
      update = train_lib._update_if_finite  # pylint: disable=protected-access
      by = {c: jax.jit(functools.partial(update, by_cond=c))(
          self.state0, grads, optax.tree.norm(grads), jnp.asarray(finite)) for c in (True, False)}
      jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-9),
                   by[True], by[False])
      if not finite:
        jax.tree.map(np.testing.assert_array_equal, by[True],
                     (self.state0.params, self.state0.opt_state))

  def test_cpu_step_updates_the_optimizer_state_in_place(self):
    """On CPU the step skips by `lax.cond`: with selects, XLA:CPU copied every optimizer moment
    at the start of each step (709 MB for the 1x model; bench/README.md, levers log)."""
    batch = self._put(_batches(1)[0])

    def state_copies(step_fn, state):
      hlo = step_fn.lower(state, batch).compile().as_text()
      # Copies of the step's (state) arguments, named after them on one device, param.N on many.
      return re.findall(r'\n  %copy\S* = f32\[\d[\d,]*\]\S* copy\(%(?:param\.|state_)', hlo)

    self.assertEqual(state_copies(self.step_fn, self.state0), [])
    by_select = functools.partial(
        train_lib._update_if_finite, by_cond=False)  # pylint: disable=protected-access
    with mock.patch.object(train_lib, '_update_if_finite', by_select):  # Traced in here.
      _, state, select_step = _setup(jax.devices(), self.config)
      self.assertNotEqual(state_copies(select_step, state), [])  # What the check would catch.

  def test_step_compiles_once(self):
    state = jax.tree.map(jnp.copy, self.state0)
    for b in _batches(3, seed=3):
      state, _ = self.step_fn(state, self._put(b))
    self.assertEqual(self.step_fn._cache_size(), 1)  # pylint: disable=protected-access

  def test_loss_falls_on_demo_data(self):
    state = jax.tree.map(jnp.copy, self.state0)
    source = datasets.create_source(self.config.data.train)
    it = input_pipeline.create_train_iter(
        source, batch_size=8, crop_size=32, augment='dihedral', seed=0, num_threads=1,
        prefetch=2, data_sharding=sharding.batch_sharding(self.mesh))
    losses = []
    for _ in range(24):
      state, m = self.step_fn(state, next(it))
      losses.append(float(m['loss']))
    it.close()
    self.assertLess(np.mean(losses[-4:]), np.mean(losses[:4]) - 1.0)  # > 1 dB better (PSNR loss).

  def test_loop_stops_after_consecutive_nonfinite_steps(self):
    config = tiny_config.get_config()
    config.train.max_consecutive_nonfinite = 3
    bad = dict(_batches(1)[0])
    bad['lq'] = np.full_like(bad['lq'], np.inf)
    run = train_lib.Run(config=config, workdir='/nonexistent', mngr=None, writer=_NullWriter(),
                        train_iter=iter(lambda: self._put(bad), None), val_source=None,
                        predict_fn=None, step_fn=self.step_fn, hooks=[])
    state = jax.tree.map(jnp.copy, self.state0)
    with self.assertRaisesRegex(FloatingPointError, r'3 consecutive .* step 3'):
      train_lib.train_loop(run, state, 0, train_lib.StopSignal())

  def test_cpu_loop_waits_for_each_step_before_dispatching_the_next(self):
    """On CPU the next step is dispatched once the last one is done (its batch already read):
    XLA:CPU would allocate its temporaries beside the running step's
    (`host_memory.calls_in_flight`)."""
    config = tiny_config.get_config()
    config.num_train_steps, config.log_every_steps = 4, 100
    batch = self._put(_batches(1)[0])
    events, block = [], jax.block_until_ready

    def step_fn(state, batch):
      state, measurements = self.step_fn(state, batch)
      events.append(('dispatch', id(measurements)))
      return state, measurements

    def recording_block(x):
      events.append(('wait', id(x)))
      return block(x)

    run = train_lib.Run(config=config, workdir='/nonexistent', mngr=None, writer=_NullWriter(),
                        train_iter=iter(lambda: batch, None), val_source=None, predict_fn=None,
                        step_fn=step_fn, hooks=[])
    state = jax.tree.map(jnp.copy, self.state0)
    with mock.patch.object(jax, 'block_until_ready', recording_block):
      _, step = train_lib.train_loop(run, state, 0, train_lib.StopSignal())
    self.assertEqual(step, 4)
    dispatched = [key for kind, key in events if kind == 'dispatch']
    self.assertLen(dispatched, 4)
    for before, after in zip(dispatched, dispatched[1:]):
      between = events[events.index(('dispatch', before)) + 1:events.index(('dispatch', after))]
      self.assertIn(('wait', before), between)

  def test_global_batch_must_divide_over_devices(self):
    with self.assertRaisesRegex(
        ValueError, r'config.batch_size=12 \(the global batch\) must be a positive multiple.*\(8\)'):
      sharding.per_process_batch_size(12, self.mesh)


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
    self.assertEqual(self._parse(f'--config={REPO}/configs/sidd.py:0.5x').model.wf, 32)
    self.assertEqual(self._parse(f'--config={REPO}/configs/sidd.py').model.wf, 64)

  def test_overrides_work_and_typos_fail(self):
    config = self._parse(f'--config={REPO}/configs/custom.py', '--config.batch_size=16',
                         '--config.optim.learning_rate=1e-3', '--config.model.dtype=bfloat16',
                         '--config.data.train_dir=/data/train')
    self.assertEqual(config.batch_size, 16)
    self.assertEqual(config.optim.learning_rate, 1e-3)
    self.assertEqual(config.data.train.root, '/data/train')  # Linked to data.train_dir.
    self.assertEqual(models.create_model(**config.model).dtype, jnp.bfloat16)
    with self.assertRaises(Exception):
      self._parse(f'--config={REPO}/configs/demo.py', '--config.bach_size=16')
    with self.assertRaises(Exception):
      self._parse(f'--config={REPO}/configs/demo.py', '--config.batch_size=abc')
    with self.assertRaisesRegex(Exception, 'Unknown SIDD variant'):
      self._parse(f'--config={REPO}/configs/sidd.py:2x')

  def test_unset_data_paths_are_named(self):
    config = self._parse(f'--config={REPO}/configs/custom.py')
    with self.assertRaisesRegex(ValueError, r'config.data.train.root .* --config.data.train_dir'):
      train_lib.validate_config(config)


if __name__ == '__main__':
  absltest.main()
