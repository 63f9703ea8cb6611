"""Deferred calls: ``@delay``, ``Result``, which request a call is in, the draining process."""
