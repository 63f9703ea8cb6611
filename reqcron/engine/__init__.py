"""The engine: Docroot (the facade every surface uses), claims, reaping, one per DOCROOT."""
