"""The one home of the exit codes of ``runtask`` and ``reqcron`` (see the README)."""

EXIT_OK = 0  # the task ran and returned; or the command found nothing wrong
EXIT_FAILED = 1  # the task raised or its process died; a command found a problem
EXIT_USAGE = 2  # usage error, unknown task, files that do not load, unusable state
EXIT_NOT_RUN = 75  # not run: the previous run still goes, or the task is disabled
EXIT_TIMEOUT = 124  # stopped by its timeout
