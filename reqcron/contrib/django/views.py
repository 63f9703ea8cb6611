"""The status page behind Django's login: staff only, Django's session and CSRF.

The page is web/status_html.py's, over the same report as the token-guarded
StatusPage; only who may see it (``is_staff``) and how forms are protected
(CsrfViewMiddleware) are Django's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import logout as sign_out
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
)
from django.middleware.csrf import get_token
from django.urls import reverse

from ...engine import registry
from ...errors import StateError, TaskLookupError, UsageError
from ...web import actions, page
from ...web.status import HEADERS
from .conf import docroot

View = Callable[..., HttpResponse]


def staff_only(*methods: str) -> Callable[[View], View]:
    """Only ``methods``; send anonymous users to the login page, refuse (403) non-staff."""
    return lambda view: _guard(view, methods)


def _guard(view: View, methods: tuple[str, ...]) -> View:
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in methods:
            return HttpResponseNotAllowed(methods)
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path(), _login_url())
        if not (user.is_active and user.is_staff):
            raise PermissionDenied("the reqcron status page is for staff users")
        try:
            response = view(request, *args, **kwargs)
        except StateError as exc:  # as the token-guarded page: 503, its reason in one line
            code, content_type, body = page.unavailable(exc, request.GET.get("format") == "json")
            response = HttpResponse(body, status=code, content_type=content_type)
        for key, value in HEADERS.items():
            response[key] = value
        return response

    guarded.__name__ = view.__name__
    guarded.__doc__ = view.__doc__
    return guarded


def _login_url() -> str | None:
    """LOGIN_URL if the project set one, else the admin site's login (as the admin does)."""
    from django.apps import apps
    from django.conf import global_settings, settings

    if settings.LOGIN_URL != global_settings.LOGIN_URL or not apps.is_installed(
            "django.contrib.admin"):
        return None
    try:
        return str(reverse("admin:login"))
    except Exception:  # no admin URLs
        return None


def _path() -> str:
    return str(reverse("reqcron:status")).rstrip("/")


@staff_only("GET", "HEAD")
def status(request: HttpRequest) -> HttpResponse:
    """The page (``?format=json``: its data; ``?run=ID``: one run's), as web/page.py makes
    it for the token-guarded page too."""
    code, content_type, body = page.answer(
        registry.engine(docroot()), request.GET, csrf=get_token(request), path=_path(),
        csrf_field="csrfmiddlewaretoken", csrf_in_json=False)
    return HttpResponse(body, status=code, content_type=content_type)


@staff_only("POST")
def action(request: HttpRequest) -> HttpResponse:
    """Run now, enable or disable a task, pause or resume the site (Django's CSRF check has
    passed)."""
    name, what = request.POST.get("task", ""), request.POST.get("action", "")
    if what not in actions.ACTIONS:
        return HttpResponse(f"Unknown action {what!r}.", status=400, content_type="text/plain")
    try:
        actions.perform(registry.engine(docroot()), what, name, request.POST.get("call", ""))
    except TaskLookupError as exc:
        return HttpResponse(str(exc), status=404, content_type="text/plain")
    except UsageError as exc:  # a call gone, or taken by a process meanwhile
        return HttpResponse(f"{exc}.", status=409, content_type="text/plain")
    if request.GET.get("format") == "json":
        return JsonResponse({"ok": True, "action": what, "task": name})
    return HttpResponseRedirect(_path() + "/")


@staff_only("POST")
def logout(request: HttpRequest) -> HttpResponse:
    """The page's "Sign out": Django's logout."""
    sign_out(request)
    return redirect_to_login(_path() + "/", _login_url())
