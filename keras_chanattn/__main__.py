"""`python -m keras_chanattn <command>`: the same as the `chanattn` command."""

import sys

from keras_chanattn.cli import main

sys.exit(main())
