"""``python -m segzoo.training ENTRY ...``, the same as ``segzoo train``; under ``torchrun`` on K processes."""

import sys

from segzoo.training.cli import main

sys.exit(main())
