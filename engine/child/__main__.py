"""``python -m engine.child``: the runtime child process (see engine.child.main)."""

import sys

from engine.child.main import main

sys.exit(main())
