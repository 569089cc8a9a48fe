"""The OpenAPI document users generate clients from: valid OpenAPI 3.1, and about this service."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator

from sam2_api.api.openapi import ERRORS, ROUTE_ERRORS, TITLE, PublishedOpenAPI, published_spec


@pytest.fixture(scope="module")
def bentoml_spec() -> dict:
    import service  # the two services' definitions; nothing is served or loaded

    return json.loads(json.dumps(service.SAM2API.openapi_spec.asdict()))  # as served: JSON


def invalid_as_openapi_3_0(spec: dict) -> bool:
    try:
        return bool(list(OpenAPIV30SpecValidator(spec).iter_errors()))
    except Exception:  # the validator itself trips over 3.1 constructs ("type": "null")
        return True


def test_bentomls_own_document_is_invalid_as_declared_and_ours_is_valid(bentoml_spec):
    assert bentoml_spec["openapi"] == "3.0.2" and invalid_as_openapi_3_0(bentoml_spec)
    spec = published_spec(bentoml_spec)
    assert spec["openapi"] == "3.1.0"
    assert [e.message for e in OpenAPIV31SpecValidator(spec).iter_errors()] == []
    assert '"type": "file"' not in json.dumps(spec)


def test_it_names_the_service_and_points_people_to_the_page(bentoml_spec):
    from importlib.metadata import version

    info = published_spec(bentoml_spec)["info"]
    assert (info["title"], info["version"]) == (TITLE, version("sam2-api"))
    assert "](ui/)" in info["description"] and "BentoML" not in info["description"]


def test_form_fields_holding_json_say_so_and_the_json_body_has_the_same_fields(bentoml_spec):
    body = published_spec(bentoml_spec)["paths"]["/segment"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["properties"]
    assert form["image"]["format"] == "binary"
    assert form["points"]["type"] == "string" and form["points"]["contentMediaType"] == "application/json"
    assert form["points"]["contentSchema"]["type"] == "array" and form["points"]["examples"] == ["[[256, 200]]"]
    as_json = body["application/json"]["schema"]["properties"]
    assert set(as_json) == set(form) - {"image", "mask_input"} and as_json["points"]["type"] == "array"  # no files


def test_every_error_status_is_documented_with_our_error_body(bentoml_spec):
    spec = published_spec(bentoml_spec)
    for route in ("/segment", "/segment_objects"):
        responses = spec["paths"][route]["post"]["responses"]
        assert set(responses) == {"200", *ERRORS}
        assert responses["404"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    everything = spec["paths"]["/segment_everything"]["post"]["responses"]
    assert set(everything) == {"200", *ERRORS} and "503" in ERRORS and "422" in ERRORS
    assert everything["503"]["description"] == ROUTE_ERRORS["/segment_everything"]["503"]
    assert "SAM2_EVERYTHING_DEADLINE_S" in everything["503"]["description"]


def test_route_descriptions_are_markdown_paragraphs_not_code_blocks(bentoml_spec):
    """A docstring's indented lines would be an indented code block in the page's Markdown."""
    raw = bentoml_spec["paths"]["/segment"]["post"]["description"]
    assert "\n        Give the image" in raw  # as BentoML takes it from the docstring
    for path, item in published_spec(bentoml_spec)["paths"].items():
        for operation in item.values():
            lines = operation.get("description", "").splitlines()
            assert not [line for line in lines if line.startswith("    ")], path
    segment = published_spec(bentoml_spec)["paths"]["/segment"]["post"]["description"]
    assert "\n\nGive the image as `image` (a file)" in segment



def get(path: str, method: str = "GET", spec: dict | None = None):
    """``GET path`` (or ``method``) from PublishedOpenAPI in front of an app that answers 404 to everything."""
    from starlette.testclient import TestClient

    async def elsewhere(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    client = TestClient(PublishedOpenAPI(elsewhere, spec=lambda: spec or {}), follow_redirects=False)
    return client.request(method, path)


def test_docs_leads_to_the_page():
    for path in ("/docs", "/docs/"):
        response = get(path)
        assert response.status_code == 308 and response.headers["location"] == "/"


def test_a_route_called_with_a_method_it_does_not_take_is_a_json_405_saying_which(bentoml_spec):
    response = get("/segment", spec=bentoml_spec)
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert response.json() == {"error": "/segment takes POST, not GET: send the fields in the body "
                                        "(multipart/form-data, a url-encoded form or JSON); the API is described "
                                        "at / (OpenAPI: /docs.json)"}
    assert get("/track/cancel", spec=bentoml_spec).json() == {"error": "/track/cancel takes PUT, not GET"}
    head = get("/segment", "HEAD", spec=bentoml_spec)
    assert head.status_code == 405 and head.content == b"" and int(head.headers["content-length"]) > 0
    # what the document lists goes on; so do paths it does not have
    assert get("/track/status", spec=bentoml_spec).status_code == 404
    assert get("/readyz", "HEAD", spec=bentoml_spec).status_code == 404
    assert get("/segment", "OPTIONS", spec=bentoml_spec).status_code == 404
    assert get("/ui/index.html", "DELETE", spec=bentoml_spec).status_code == 404


def test_the_page_shows_the_documents_title():
    """BentoML's index.css hides `.info .main .title` (but for its version badge); the page shows it again."""
    page = get("/").text
    assert ".swagger-ui .info .main .title, .swagger-ui .info .main .title span { visibility: visible;" in page


def test_the_docs_page_runs_swagger_ui_from_this_origin_only():
    """BentoML's page at / loads Google Tag Manager (an inline script that adds one from
    googletagmanager.com) on the origin where /ui keeps the API key; ours loads nothing from elsewhere."""
    import re
    from pathlib import Path

    import _bentoml_impl.server
    import bentoml._internal.server

    bentomls = (Path(_bentoml_impl.server.__file__).parent / "main-openapi.html").read_text()
    assert "googletagmanager.com" in bentomls  # what ours replaces

    response = get("/")
    assert response.status_code == 200 and response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert [re.search(r'src="([^"]+)"', attrs).group(1) for attrs, _ in scripts] == [
        "./static_content/swagger-ui-bundle.js", "./static_content/swagger-ui-standalone-preset.js",
        "./static_content/swagger-initializer.js"]
    assert all(not body.strip() for _, body in scripts)  # no inline script
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "googletagmanager" not in page and "<iframe" not in page
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "connect-src 'self';" in policy and "default-src 'none'" in policy
    bundled = Path(bentoml._internal.server.__file__).parent / "static_content"  # where BentoML serves them from
    for asset in re.findall(r'(?:src|href)="\./static_content/([^"]+)"', page):
        assert (bundled / asset).is_file(), asset
