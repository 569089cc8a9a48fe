"""RequestGuard on Roboflow's routes (``key_in_query_or_body``): the key may also come as
``?api_key=`` or as the JSON body's ``api_key``, as Roboflow's clients send it; elsewhere only the
Authorization header counts. Errors there carry ``message`` too (what inference-sdk shows)."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.unit.test_guard import client, seen

KEYS = ["key-one", "key-two"]


@pytest.fixture(autouse=True)
def _clear():
    seen.clear()



TENANT = hashlib.sha256(b"key-two").hexdigest()[:16]


def post(path: str = "/segment", body: dict | None = None, headers: dict | None = None, roboflow: bool = True):
    return client(api_keys=KEYS, key_in_query_or_body=roboflow, max_json_body_bytes=1000).post(
        path, content=json.dumps(body or {}).encode(), headers={"Content-Type": "application/json", **(headers or {})})


@pytest.mark.parametrize("path, body, headers", [
    ("/segment?api_key=key-two", {}, {}),
    ("/segment", {"api_key": "key-two", "image_id": "a"}, {}),
    ("/segment", {}, {"Authorization": "Bearer key-two"}),
], ids=["query", "body", "header"])
def test_the_key_may_come_in_any_of_roboflows_three_places(path, body, headers):
    response = post(path, body, headers)
    assert response.status_code == 200, response.text
    assert seen[0]["tenant"] == TENANT


@pytest.mark.parametrize("path, body, headers", [
    ("/segment", {}, {}),
    ("/segment", {"api_key": None}, {}),
    ("/segment", {"api_key": "wrong"}, {}),
    ("/segment", {"api_key": ["key-one"]}, {}),
    ("/segment?api_key=wrong", {"api_key": "key-one"}, {}),  # the query's key is the one that counts
    ("/segment?api_key=key-one", {}, {"Authorization": "Bearer wrong"}),  # and the header's before it
], ids=["none", "null", "wrong-body", "not-a-string", "wrong-query", "wrong-header"])
def test_a_missing_or_wrong_key_is_401_with_message_and_never_echoed(path, body, headers):
    response = post(path, body, headers)
    assert response.status_code == 401
    answer = response.json()
    assert answer["error"] == answer["message"] and "missing or invalid API key" in answer["message"]
    assert "`?api_key=`, or `api_key` in the JSON body" in answer["message"]
    assert "key-one" not in response.text and "wrong" not in response.text
    assert seen == []  # the app never ran: its handler was unwound in receive()


def test_two_query_keys_are_400():
    response = post("/segment?api_key=key-one&api_key=key-two")
    assert response.status_code == 400 and "one `api_key` query parameter" in response.json()["message"]


@pytest.mark.parametrize("path, body", [("/segment?api_key=key-two", {}), ("/segment", {"api_key": "key-two"})])
def test_on_other_routes_only_the_header_counts(path, body):
    response = post(path, body, roboflow=False)
    assert response.status_code == 401 and set(response.json()) == {"error"}


def test_millions_of_values_are_refused_before_they_are_parsed():
    """The body may be an image's base64 in size; as that many parsed numbers it would take GBs."""
    from sam2_api.api import roboflow
    from sam2_api.prompts import MAX_POINTS

    most = {"prompts": [{"points": [{"x": 1.5, "y": 2.5, "positive": True}] * MAX_POINTS,
                         "box": {"x": 1, "y": 2, "width": 3, "height": 4}}] * roboflow.MAX_OBJECTS,
            "api_key": "key-two"}
    guarded = client(api_keys=KEYS, key_in_query_or_body=True, max_upload_bytes=10_000_000, max_json_body_bytes=10_000_000,
                     max_json_items=roboflow.MAX_JSON_ITEMS)
    assert guarded.post("/segment", content=json.dumps(most).encode(), headers={"Content-Type": "application/json"}
                        ).status_code == 200  # the most prompts Roboflow's routes take
    flood = '{"api_key": "key-two", "prompts": [' + ",".join(['{"x": 1.5, "y": 2.5}'] * 100_000) + "]}"
    response = guarded.post("/segment", content=flood.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and f"more than {roboflow.MAX_JSON_ITEMS} values" in response.json()["message"]
