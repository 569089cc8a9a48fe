"""Roboflow's own client, run as its users run it: ``.venv-clients/bin/python tests/clients/roboflow_call.py``.

Calls ``InferenceHTTPClient(api_url=..., api_key=...).sam2_segment_image(...)`` of the installed
``inference-sdk`` (no code of ours is imported: it runs in the clients' venv) and prints what the
client returned as JSON on stdout; a client error is printed as ``{"sdk_error": type, "status",
"message"}`` and exit status 3. Arguments: one JSON object on argv[1] with ``api_url``,
``api_key`` (or null), ``image`` (a file path, sent as the SDK sends files: its bytes in base64),
``prompts`` (the SDK's list of prompt dicts), and optionally ``format``, ``multimask_output``,
``sam2_version_id``, ``transport`` ("legacy": the key in the body; "header": Authorization: Bearer).
"""

import json
import sys

from inference_sdk import InferenceConfiguration, InferenceHTTPClient
from inference_sdk.http.errors import HTTPCallErrorError


def main() -> int:
    args = json.loads(sys.argv[1])
    client = InferenceHTTPClient(api_url=args["api_url"], api_key=args.get("api_key"))
    client.configure(InferenceConfiguration(api_key_transport=args.get("transport", "legacy")))
    options = {key: args[key] for key in ("sam2_version_id", "multimask_output") if key in args}
    try:
        result = client.sam2_segment_image(args["image"], prompts=args["prompts"],
                                           mask_input_format=args.get("format", "json"), **options)
    except HTTPCallErrorError as exc:
        print(json.dumps({"sdk_error": type(exc).__name__, "status": exc.status_code, "message": exc.api_message}))
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
