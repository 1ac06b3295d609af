"""`python -m hinet_jax.prepare_sidd`: kept as a short name for `python -m hinet_jax.data.prepare_sidd`."""

from absl import app

from hinet_jax.data.prepare_sidd import _define_flags, main

if __name__ == '__main__':
  _define_flags()
  app.run(main)
