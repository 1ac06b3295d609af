"""Evaluates a HINet checkpoint with a published protocol, or restores your own images.

  python eval.py --checkpoint=DIR --protocol=NAME --data_dir=PATH [--metrics_json=PATH]
  python eval.py --checkpoint=DIR --input=FILE_OR_DIR --output=DIR [--panels]

A thin entry point at the repository top; the program is `hinet_jax/cli/eval.py` (every flag),
also installed as the `hinet-eval` command.
"""

from hinet_jax.cli import eval as eval_cli

if __name__ == '__main__':
  eval_cli.run()
