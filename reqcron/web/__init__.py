"""The web surfaces: WSGI and ASGI middlewares over one Tender, the status page, metrics."""
