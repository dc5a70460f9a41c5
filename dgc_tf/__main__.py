"""Run the `dgc-tf` command line as `python -m dgc_tf`."""
import sys

from dgc_tf.training.cli import main

sys.exit(main())
