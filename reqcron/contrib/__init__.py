"""Adapters to frameworks, above every other layer: each imports its framework itself."""
