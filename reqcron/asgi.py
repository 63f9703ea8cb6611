"""``from reqcron.asgi import ReqCronASGI``: the public home of web/asgi.py's middleware."""

from .web.asgi import ReqCronASGI

__all__ = ["ReqCronASGI"]
