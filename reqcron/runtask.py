"""``python -m reqcron.runtask DOCROOT TASKNAME``: the entry point of every task process."""

import sys

from .cli.main import runtask_main

if __name__ == "__main__":
    sys.exit(runtask_main())
