"""A CVAT interactor that forwards to sam2-api: CVAT's call goes, unchanged, to POST /cvat/interactor.

nuclio calls ``handler(context, event)`` with CVAT's JSON body in ``event.body`` (cvat-ai/cvat's own
functions read it the same way, e.g. serverless/pytorch/saic-vul/hrnet/nuclio/main.py); the
service's answer (``{"mask": ..., "bounds": ...}``, or ``{"error": ...}`` with its status) goes back
as it came. Settings, from the function's environment: SAM2_API_URL (where this function reaches
the service), SAM2_API_KEY (when the service has API keys), SAM2_TIMEOUT_S. Standard library only.
"""

import json
import os
import urllib.error
import urllib.request


def handler(context, event):
    url = os.environ.get("SAM2_API_URL", "http://sam2-api:3000").rstrip("/") + "/cvat/interactor"
    body = event.body if isinstance(event.body, bytes) else json.dumps(event.body).encode()  # nuclio decodes JSON
    headers = {"Content-Type": "application/json"}
    if os.environ.get("SAM2_API_KEY"):
        headers["Authorization"] = "Bearer " + os.environ["SAM2_API_KEY"]
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=float(os.environ.get("SAM2_TIMEOUT_S", "55"))) as reply:
            status, answer = reply.status, reply.read()
    except urllib.error.HTTPError as error:  # the service's 4xx/5xx, with its {"error": ...}
        status, answer = error.code, error.read()
    except OSError as error:  # not reachable, or no answer in time
        context.logger.warn(f"sam2-api at {url} did not answer: {error}")
        status, answer = 502, json.dumps({"error": f"sam2-api at {url} did not answer: {error}"}).encode()
    return context.Response(body=answer.decode("utf-8"), headers={}, content_type="application/json",
                            status_code=status)
