"""The programs answer a user's mistake with one message, no traceback, and exit status 2.

Each case runs a program in a subprocess, as a user would, with an input that fails before any
model is built or compiled (a few seconds each). `--traceback` brings the traceback back.
"""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from hinet_jax.cli import runner

import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, os.path.join(REPO, 'train.py')]
EVAL = [sys.executable, os.path.join(REPO, 'eval.py')]
CONVERT = [sys.executable, '-m', 'hinet_jax.convert']
PREPARE_SIDD = [sys.executable, '-m', 'hinet_jax.prepare_sidd']
DEMO = '--config=configs/demo.py'


def run_program(cmd, cwd):
  """Runs `cmd` in `cwd` on CPU; returns the CompletedProcess (text stdout/stderr)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')  # the installed package
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.fixture(name='files')
def files_fixture(tmp_path):
  """Paths the cases point at: a checkpoint-like folder, pairs with a name mismatch, junk files."""
  (tmp_path / 'ckpt').mkdir()
  data_fixtures.write_pair_folder(tmp_path / 'pairs', ['a', 'b'])
  for unpaired in ('input/c.png', 'target/d.png'):
    data_fixtures.write_rgb(str(tmp_path / 'pairs' / unpaired), np.zeros((4, 4, 3), np.uint8))
  (tmp_path / 'notes.txt').write_text('not an image')
  (tmp_path / 'weights.pth').write_bytes(b'any bytes: never read')
  (tmp_path / 'taken').mkdir()
  scene = tmp_path / 'sidd' / 'Data' / '0001_001_S6_00100_00060_3200_L'
  scene.mkdir(parents=True)
  for kind in ('NOISY', 'GT'):
    (scene / f'0001_{kind}_SRGB_010.PNG').write_bytes(b'not a PNG')
  return tmp_path


# (id, command, arguments; {tmp} is the fixture folder, expected words in the message).
CASES = [
    ('misspelled_config_key', TRAIN, [DEMO, '--workdir={tmp}/w', '--config.lerning_rate=1e-3'],
     ["Unknown config key 'lerning_rate'", 'configs/demo.py', '--config.lerning_rate=1e-3',
      'Did you mean: optim.learning_rate']),
    ('missing_config_file', TRAIN, ['--config=configs/dmo.py', '--workdir={tmp}/w'],
     ['configs/dmo.py', 'does not exist', 'Did you mean configs/demo.py']),
    ('unknown_flag', TRAIN, [DEMO, '--wrkdir={tmp}/w'], ["'wrkdir'", 'workdir']),
    ('missing_train_data_dir', TRAIN,
     ['--config=configs/custom.py', '--workdir={tmp}/w', '--config.data.train_dir={tmp}/nowhere',
      '--config.data.val_dir={tmp}/nowhere'],
     ['nowhere/input does not exist']),
    ('missing_eval_data_dir', EVAL,
     ['--checkpoint={tmp}/ckpt', '--protocol=folder', '--data_dir={tmp}/nowhere'],
     ['--data_dir=', 'nowhere does not exist']),
    ('name_mismatch', EVAL,
     ['--checkpoint={tmp}/ckpt', '--protocol=folder', '--data_dir={tmp}/pairs'],
     ['In {tmp}/pairs/input but missing from {tmp}/pairs/target: c.png.',
      'In {tmp}/pairs/target but missing from {tmp}/pairs/input: d.png.']),
    ('missing_checkpoint', EVAL,
     ['--checkpoint={tmp}/nowhere', '--input={tmp}/notes.txt', '--output={tmp}/out'],
     ['--checkpoint=', 'nowhere does not exist']),
    ('bad_protocol', EVAL, ['--checkpoint={tmp}/ckpt', '--protocol=sidd', '--data_dir={tmp}'],
     ['--protocol=sidd', 'sidd_val']),
    ('non_image_input', EVAL,
     ['--checkpoint={tmp}/ckpt', '--input={tmp}/notes.txt', '--output={tmp}/out'],
     ['notes.txt is not an image file']),
    ('output_exists', CONVERT, ['--torch_checkpoint={tmp}/weights.pth', '--output={tmp}/taken'],
     ['--output=', 'taken already exists', '--overwrite']),
    ('unreadable_image', PREPARE_SIDD,
     ['--input_dir={tmp}/sidd', '--output_dir={tmp}/crops', '--num_workers=1'],
     ['0001_NOISY_SRGB_010.PNG', 'not PNG, JPEG']),
    ('config_conflict_names_the_fix', TRAIN, [DEMO, '--workdir={tmp}/w',
                                              '--config.num_train_steps=2'],
     ['config.optim.warmup_steps=50 must be smaller than the cosine period 2',
      '--config.optim.warmup_steps=0']),
]


@pytest.mark.parametrize('cmd,args,expected', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_message(files, cmd, args, expected):
  proc = run_program(cmd + [a.format(tmp=files) for a in args], cwd=REPO)
  assert proc.returncode == runner.EXIT_USER_ERROR, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  message = [line for line in proc.stderr.splitlines() if ': error: ' in line]
  assert len(message) == 1, proc.stderr[-3000:]
  error = proc.stderr[proc.stderr.index(message[0]):]
  for words in expected:
    assert words.format(tmp=files) in error, error


def test_traceback_flag_shows_the_traceback(files):
  proc = run_program(TRAIN + [DEMO, f'--workdir={files}/w', '--config.lerning_rate=1e-3',
                              '--traceback'], cwd=REPO)
  assert proc.returncode not in (0, runner.EXIT_USER_ERROR)
  assert 'Traceback' in proc.stderr
  assert "Unknown config key 'lerning_rate'" in proc.stderr


def test_unknown_key_suggestions():
  config = ml_collections.ConfigDict({
      'seed': 0, 'batch_size': 8,
      'optim': {'learning_rate': 1e-3, 'b1': 0.9},
      'data': {'train': {'root': '', 'kind': 'folder'}, 'eval_batch_size': 8}})
  config.lock()

  def message(key):
    error = runner.unknown_key_error(config, key, f'--config.{key}=1', 'c.py')
    return None if error is None else str(error)

  assert message('optim.learning_rate') is None
  assert message('data.train.root') is None
  assert 'Did you mean: optim.learning_rate?' in message('lerning_rate')
  assert 'Did you mean: data.train.root' in message('data.trian.root')
  assert 'Did you mean: batch_size' in message('batchsize')
  assert 'The keys of config.optim are: b1, learning_rate.' in message('optim.zzz')
  assert isinstance(runner.unknown_key_error(config, 'zzz', 'x', 'c.py'), ValueError)
