"""``python -m tools.meshctl_cli``: the same as the ``meshctl`` console script."""

import sys

from . import main

sys.exit(main())
