"""``python -m kvdeck``: the same as the ``kvdeck`` command."""

import sys

from kvdeck.launcher import main

sys.exit(main())
