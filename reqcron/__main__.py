"""``python -m reqcron``: the administrator's command."""

import sys

from .cli import main

sys.exit(main())
