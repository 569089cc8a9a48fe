"""Request metrics are labelled by the route that matched, never by the raw path."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bentoml._internal.server.http import instruments
from sam2_api.api.route_metrics import UNMATCHED, RouteLabelledMetrics, label_metrics_by_route, route_label


def ok(request):
    return PlainTextResponse("ok")


APP = Starlette(routes=[
    Route("/segment", ok, methods=["POST"]), Route("/readyz", ok), Route("/items/{item_id}", ok), Route("/", ok),
    Mount("/ui", StaticFiles(directory="/", check_dir=False)),
])


@pytest.mark.parametrize("method, path, label", [
    ("POST", "/segment", "/segment"),
    ("GET", "/segment", "/segment"),  # a 405 is still that route's
    ("GET", "/readyz", "/readyz"),
    ("GET", "/items/42", "/items/{item_id}"),
    ("GET", "/", "/"),
    ("GET", "/ui/index.html", "/ui"),
    ("GET", "/ui/a/b/c.js", "/ui"),
    ("GET", "/wp-admin/x.php", UNMATCHED),
    ("GET", "/segment/../../etc/passwd", UNMATCHED),
    ("POST", "/segmentX", UNMATCHED),
])
def test_each_path_is_labelled_by_its_route(method, path, label):
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": APP}
    assert route_label(scope) == label


def test_bentoml_builds_the_labelled_middleware_once_installed():
    original = instruments.RunnerTrafficMetricsMiddleware
    try:
        label_metrics_by_route()
        label_metrics_by_route()  # twice changes nothing
        assert instruments.RunnerTrafficMetricsMiddleware is RouteLabelledMetrics
        assert issubclass(RouteLabelledMetrics, original)
    finally:
        instruments.RunnerTrafficMetricsMiddleware = original
