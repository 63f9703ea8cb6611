"""``path("reqcron/", include("reqcron.contrib.django.urls"))``: the status page, for staff."""

from django.urls import path

from . import views

app_name = "reqcron"
urlpatterns = [
    path("", views.status, name="status"),
    path("action", views.action, name="action"),
    path("logout", views.logout, name="logout"),
]
