"""``python -m reqcron``: the administrator's command."""

import sys

from .cli.main import main

sys.exit(main())
