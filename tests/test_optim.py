"""The optimizer recipe against PyTorch's Adam, clip_grad_norm_ and CosineAnnealingLR."""

import math

from absl.testing import absltest
import jax
import numpy as np
import optax

from hinet_jax.train import optim


class ScheduleTest(absltest.TestCase):

  def test_cosine_matches_torch_cosine_annealing(self):
    torch = __import__('torch')
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=2e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-6)
    fn = optim.create_learning_rate_fn(learning_rate=2e-4, decay_steps=100, eta_min=1e-6)
    for step in range(100):
      np.testing.assert_allclose(float(fn(step)), opt.param_groups[0]['lr'], rtol=1e-5)
      opt.step()
      sched.step()
    self.assertAlmostEqual(float(fn(150)), 1e-6, places=9)  # Held at eta_min after T.

  @staticmethod
  def _official_sequence(lr, t_max, eta_min, warmup, num_steps):
    """The learning rate of upstream's iterations 1..num_steps, transcribed step by step.

    basicsr/train.py calls `update_learning_rate(current_iter, warmup_iter)` before each
    iteration's update; it steps the scheduler from the second iteration on (torch's chained
    `CosineAnnealingLR.get_lr`, which scales whatever lr the optimizer holds) and then, while
    `current_iter < warmup_iter`, overwrites that lr with `initial_lr / warmup_iter * current_iter`
    (basicsr/models/base_model.py).
    """
    group_lr, out = lr, []
    for it in range(1, num_steps + 1):
      if it > 1:
        epoch = it - 1  # The scheduler's last_epoch after this step().
        if (epoch - 1 - t_max) % (2 * t_max) == 0:
          group_lr += (lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        else:
          group_lr = ((1 + math.cos(math.pi * epoch / t_max)) /
                      (1 + math.cos(math.pi * (epoch - 1) / t_max)) * (group_lr - eta_min) +
                      eta_min)
      if it < warmup:
        group_lr = lr / warmup * it
      out.append(group_lr)
    return np.asarray(out)

  def test_schedule_is_the_official_chained_sequence_with_and_without_warmup(self):
    """In float64 the schedule is upstream's sequence to 1e-7 (the warm-up lifts the rest of the
    cosine by ~(pi W / T)^2 / 4, which the closed form missed); float32, as the step evaluates it,
    stays within a few ulps."""
    for warmup, eta_min in ((0, 1e-6), (2, 0.0), (30, 1e-7), (120, 1e-7)):
      want = self._official_sequence(2e-4, 300, eta_min, warmup, 300)
      fn = optim.create_learning_rate_fn(learning_rate=2e-4, decay_steps=300, eta_min=eta_min,
                                         warmup_steps=warmup)
      with jax.enable_x64(True):
        got = np.asarray(jax.vmap(fn)(np.arange(300, dtype=np.int64)))
      self.assertEqual(got.dtype, np.float64)
      np.testing.assert_allclose(got, want, rtol=1e-7, atol=0, err_msg=f'warmup {warmup}')
      np.testing.assert_allclose(jax.vmap(fn)(np.arange(300)), want, rtol=5e-7, atol=0)
      self.assertEqual(float(fn(450)), np.float32(eta_min))  # Held at eta_min after T.
    # After warm-up the official cosine runs above the closed form's (the issue-20 difference).
    cos = optim.create_learning_rate_fn(learning_rate=2e-4, decay_steps=300, eta_min=1e-7)
    fn = optim.create_learning_rate_fn(learning_rate=2e-4, decay_steps=300, eta_min=1e-7,
                                       warmup_steps=120)
    self.assertGreater(float(fn(200)) / float(cos(200)), 1.02)

  def test_bad_schedule_names_the_option(self):
    with self.assertRaisesRegex(ValueError, 'decay_steps'):
      optim.create_learning_rate_fn(learning_rate=1e-3, decay_steps=0)
    with self.assertRaisesRegex(ValueError, r'config.optim.warmup_steps=100 must be smaller'):
      optim.create_learning_rate_fn(learning_rate=1e-3, decay_steps=100, warmup_steps=100)


class OptimizerTest(absltest.TestCase):

  def test_three_steps_match_torch_adam_with_grad_clipping(self):
    torch = __import__('torch')
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5,)).astype(np.float32)
    grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(3)]
    lr_fn = optim.create_learning_rate_fn(learning_rate=1e-2, decay_steps=10, eta_min=1e-4)
    tx = optim.create_optimizer(lr_fn, b1=0.9, b2=0.99, grad_clip_norm=0.01)
    params, state = w0, tx.init(w0)
    for g in grads:
      updates, state = tx.update(g, state, params)
      params = optax.apply_updates(params, updates)

    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = torch.optim.Adam([p], lr=1e-2, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4)
    for g in grads:
      p.grad = torch.from_numpy(g.copy())
      torch.nn.utils.clip_grad_norm_([p], 0.01)
      opt.step()
      sched.step()
    np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=1e-5, atol=1e-7)

  def test_clip_with_or_without_the_norm_is_optax_clip_by_global_norm(self):
    """The clip takes a norm the caller computed (the train step's) and is optax's otherwise (to
    a rounding: a coefficient, not a division), below and above the threshold, with the same
    (empty) state, so checkpoints keep their tree."""
    rng = np.random.default_rng(0)
    grads = {'a': rng.normal(size=(3, 4)).astype(np.float32),
             'b': rng.normal(size=(7,)).astype(np.float32)}
    norm = optax.tree.norm(grads)
    for max_norm in (0.5, 100.0):
      want, want_state = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
      clip = optim.clip_by_global_norm(max_norm)
      self.assertEqual(clip.init(grads), want_state)
      for kwargs in ({}, {'global_norm': norm}):
        got, _ = clip.update(grads, clip.init(grads), **kwargs)
        for k in grads:
          np.testing.assert_allclose(got[k], want[k], rtol=3e-7, atol=0)
    # The given norm is the one used (not recomputed): twice the norm, half the clipped update.
    clipped, _ = optax.clip_by_global_norm(0.5).update(grads, optax.EmptyState())
    halved, _ = optim.clip_by_global_norm(0.5).update(grads, optax.EmptyState(),
                                                      global_norm=2 * norm)
    np.testing.assert_allclose(halved['a'], clipped['a'] / 2, rtol=1e-6)


if __name__ == '__main__':
  absltest.main()
