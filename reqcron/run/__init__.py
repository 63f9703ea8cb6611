"""A task process: runtask's bookkeeping, the supervised child, spawning detached processes."""
