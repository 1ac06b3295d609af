"""Checkpoint round trips, retention (latest N + best), interrupted saves, params-only loading,
and workdirs written by earlier versions."""

import json
import os
import tempfile
import time

from absl.testing import absltest
import grain
import jax
import numpy as np
import optax

from hinet_jax import api
from hinet_jax import checkpoints
from hinet_jax import errors
from hinet_jax import files
from hinet_jax import models
from hinet_jax.configs import tiny as tiny_config
from hinet_jax.train import checkpointing
from hinet_jax.train import resume
from hinet_jax.train import sharding
from hinet_jax.train import validation
from hinet_jax.train import step as step_lib

TINY = dict(wf=8, depth=2, hin_position_left=0, hin_position_right=1)


def _tiny_state(seed=0):
  model = models.create_model(**TINY)
  mesh = sharding.create_mesh()
  state, abstract, _ = step_lib.init_state(model, optax.adam(1e-3), mesh, seed)
  return model, state, abstract


def _range_iter():
  return iter(grain.MapDataset.range(100).seed(0).shuffle().to_iter_dataset())


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


class CheckpointingTest(absltest.TestCase):

  def _tmpdir(self):
    d = tempfile.TemporaryDirectory()  # absltest's create_tempdir needs parsed flags (pytest).
    self.addCleanup(d.cleanup)
    return d.name

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.state, cls.abstract = _tiny_state()

  def test_round_trip_is_exact_including_the_data_iterator(self):
    workdir = self._tmpdir()
    it = _range_iter()
    for _ in range(7):
      next(it)
    mngr = checkpoints.create_manager(workdir)
    checkpointing.save(mngr, 7, self.state, data_iter=it, meta={'config': {'a': 1}})
    expected_next = [next(it) for _ in range(3)]
    mngr.wait_until_finished()
    mngr.close()

    fresh_it = _range_iter()
    mngr = checkpoints.create_manager(workdir)
    state, meta = checkpointing.restore(mngr, self.abstract, data_iter=fresh_it)
    mngr.close()
    _assert_trees_equal(state.params, self.state.params)
    _assert_trees_equal(state.opt_state, self.state.opt_state)
    self.assertEqual(meta['step'], 7)
    self.assertEqual(meta['config'], {'a': 1})
    self.assertEqual([next(fresh_it) for _ in range(3)], expected_next)
    self.assertEqual(state.params['conv_01']['kernel'].sharding,
                     self.abstract.params['conv_01']['kernel'].sharding)

  def test_keeps_latest_n_and_the_best(self):
    workdir = self._tmpdir()
    mngr = checkpoints.create_manager(workdir, keep_latest=2, keep_best=1)
    psnrs = {2: 20.0, 3: 31.0, 4: 25.0, 6: 22.0}
    for step in range(1, 7):
      metrics = {'psnr': psnrs[step]} if step in psnrs else None
      checkpointing.save(mngr, step, self.state, metrics=metrics)
    mngr.wait_until_finished()
    self.assertEqual(sorted(mngr.all_steps()), [3, 5, 6])
    mngr.close()
    self.assertEqual(checkpoints.select_step(workdir, 'best'), 3)
    self.assertEqual(checkpoints.select_step(workdir, 'latest'), 6)

  def test_interrupted_save_leaves_the_previous_step_usable(self):
    workdir = self._tmpdir()
    mngr = checkpoints.create_manager(workdir)
    checkpointing.save(mngr, 5, self.state)
    mngr.wait_until_finished()
    mngr.close()
    # What a kill during the write of step 10 leaves behind (orbax renames when complete).
    partial = os.path.join(checkpoints.checkpoint_dir(workdir), '10.orbax-checkpoint-tmp-123')
    os.makedirs(os.path.join(partial, 'state'))
    with open(os.path.join(partial, 'state', 'garbage'), 'w') as f:
      f.write('partial')
    mngr = checkpoints.create_manager(workdir)
    self.assertEqual(mngr.latest_step(), 5)
    deadline = time.time() + 30  # orbax deletes leftovers in the background at start-up.
    while os.path.exists(partial) and time.time() < deadline:
      time.sleep(0.05)
    self.assertFalse(os.path.exists(partial))
    state, _ = checkpointing.restore(mngr, self.abstract)
    mngr.close()
    _assert_trees_equal(state.params, self.state.params)

  def test_load_params_from_workdir(self):
    workdir = self._tmpdir()
    checkpointing.write_model_config(workdir, models.model_config(self.model))
    mngr = checkpoints.create_manager(workdir)
    checkpointing.save(mngr, 3, self.state, metrics={'psnr': 30.0})
    other = self.state.replace(params=jax.tree.map(lambda p: p + 1.0, self.state.params))
    checkpointing.save(mngr, 4, other, metrics={'psnr': 10.0})
    mngr.wait_until_finished()
    mngr.close()
    cfg, params = checkpoints.load_params_from_workdir(workdir, 'best')
    self.assertEqual(cfg['wf'], 8)
    _assert_trees_equal(params, self.state.params)
    _, params = checkpoints.load_params_from_workdir(workdir, 'latest')
    _assert_trees_equal(params, other.params)
    _, params = checkpoints.load_params_from_workdir(workdir, '3')
    _assert_trees_equal(params, self.state.params)

  def test_missing_workdir_files_say_what_is_wrong(self):
    workdir = self._tmpdir()
    with self.assertRaisesRegex(FileNotFoundError, 'model_config.json'):
      checkpoints.load_params_from_workdir(workdir)
    checkpointing.write_model_config(workdir, models.model_config(self.model))
    with self.assertRaisesRegex(FileNotFoundError, 'No complete checkpoint'):
      checkpoints.load_params_from_workdir(workdir)


class InitAndResumeTest(absltest.TestCase):
  """What a fresh or resumed run starts from: `config.init_from`, the data position."""

  def _tmpdir(self):
    d = tempfile.TemporaryDirectory()
    self.addCleanup(d.cleanup)
    return d.name

  def test_init_from_a_training_workdir_on_eight_devices(self):
    self.assertEqual(jax.device_count(), 8)
    config = tiny_config.get_config()
    model = models.create_model(**config.model)
    tx = step_lib.create_optimizer(config, step_lib.create_learning_rate_fn(config))
    mesh = sharding.create_mesh()
    trained, _, _ = step_lib.init_state(model, tx, mesh, seed=7)
    source = self._tmpdir()
    checkpointing.write_model_config(source, models.model_config(model))
    mngr = checkpoints.create_manager(source)
    checkpointing.save(mngr, 4, trained)
    mngr.wait_until_finished()
    mngr.close()

    config.init_from = source
    mngr = checkpoints.create_manager(self._tmpdir())
    start = resume.restore_or_init(config, model, tx, mesh, mngr)
    mngr.close()
    self.assertEqual(start.step, 0)
    _assert_trees_equal(start.state.params, trained.params)
    kernel = start.state.params['conv_01']['kernel']
    self.assertEqual(kernel.sharding, sharding.replicated(mesh))
    self.assertLen(kernel.sharding.device_set, 8)

  def test_init_from_a_missing_path_is_named(self):
    config = tiny_config.get_config()
    config.init_from = os.path.join(self._tmpdir(), 'no_such_run')
    model = models.create_model(**config.model)
    with self.assertRaisesRegex(errors.MissingPathError, 'config.init_from=.*no_such_run'):
      resume.initial_params(config, model)

  def test_data_position_resumes_only_with_the_same_layout(self):
    config = tiny_config.get_config()
    layout = resume.data_layout(config)
    self.assertEqual(resume.plan_data_resume(config, {'data_layout': layout, 'data_stream': 3}, 9),
                     (3, True))
    self.assertEqual(resume.plan_data_resume(config, {}, 9), (0, True))  # Older checkpoints.
    for changed in ({'process_count': 2}, {'num_workers': 4}):
      meta = {'data_layout': dict(layout, **changed), 'data_stream': 3}
      self.assertEqual(resume.plan_data_resume(config, meta, 9), (9, False))

  def test_best_step_counts_the_final_evaluation(self):
    workdir = self._tmpdir()
    _, state, _ = _tiny_state()
    mngr = checkpoints.create_manager(workdir)
    checkpointing.save(mngr, 2, state, metrics={'psnr': 30.0})
    checkpointing.save(mngr, 4, state)  # The final state, saved before its evaluation.
    mngr.wait_until_finished()
    mngr.close()
    self.assertEqual(checkpoints.select_step(workdir, 'best'), 2)
    files.write_text(os.path.join(workdir, checkpoints.FINAL_METRICS_FILE),
                     json.dumps({'step': 4, 'psnr': 31.0}))
    self.assertEqual(checkpoints.select_step(workdir, 'best'), 4)

  def test_several_validation_sets_average_into_the_headline(self):
    def result(psnr, n):
      return {'psnr': psnr, 'ssim': psnr / 40, 'input_psnr': 20.0, 'input_ssim': 0.5,
              'psnr_official': psnr, 'ssim_official': psnr / 40, 'official_peak_flips': 0,
              'num_images': n}
    combined = validation.combine_sets({'a': result(30.0, 10), 'b': result(20.0, 2)})
    self.assertEqual((combined['psnr'], combined['ssim'], combined['num_images']),
                     (25.0, 0.625, 12))  # Each set weighs the same; counts add up.
    self.assertEqual((combined['a/psnr'], combined['b/num_images']), (30.0, 2))
    self.assertEqual(validation.combine_sets({'a': result(30.0, 10)}), result(30.0, 10))


class OlderWorkdirTest(absltest.TestCase):
  """A workdir written before the backend became a run-time choice: its model_config.json and
  the config in its checkpoints carry `conv_impl`."""

  def test_resumes_and_loads(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    workdir = tmp.name
    config = tiny_config.get_config()
    model = models.create_model(**config.model)
    lr_fn = step_lib.create_learning_rate_fn(config)
    tx = step_lib.create_optimizer(config, lr_fn)
    mesh = sharding.create_mesh()
    state, _, _ = step_lib.init_state(model, tx, mesh, seed=3)
    with open(os.path.join(workdir, checkpoints.MODEL_CONFIG_FILE), 'w') as f:
      json.dump(dict(models.model_config(model), conv_impl='auto'), f)
    old_config = config.to_dict()
    del old_config['backend']
    old_config['model']['conv_impl'] = 'native'
    mngr = checkpoints.create_manager(workdir)
    checkpointing.save(mngr, 5, state, meta={'config': old_config})
    mngr.wait_until_finished()

    start = resume.restore_or_init(config, model, tx, mesh, mngr)
    self.assertEqual(start.step, 5)
    _assert_trees_equal(start.state.params, state.params)
    _assert_trees_equal(start.state.opt_state, state.opt_state)
    # Another architecture is refused, naming the field.
    wider = models.create_model(**dict(config.model, wf=16))
    with self.assertRaisesRegex(ValueError, r"different model: \{'wf': \(8, 16\)\} .* Resume "
                                            r"with --config.model.wf=8"):
      resume.restore_or_init(config, wider, tx, mesh, mngr)
    mngr.close()

    model_cfg, params = checkpoints.load_params_from_workdir(workdir)
    _assert_trees_equal(params, state.params)
    self.assertEqual(models.model_config(models.create_model(**model_cfg)),
                     models.model_config(model))
    loaded, params = api.load_pretrained(workdir, backend='xla')
    self.assertEqual(models.model_config(loaded), models.model_config(model))
    _assert_trees_equal(params, state.params)


if __name__ == '__main__':
  absltest.main()
