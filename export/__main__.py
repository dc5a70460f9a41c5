"""Entry point of `python -m dgc_tf.export`."""

import sys

from dgc_tf.export.cli import main

sys.exit(main(sys.argv[1:]))
