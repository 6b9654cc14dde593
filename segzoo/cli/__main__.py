import sys

from segzoo.cli import main

sys.exit(main())
