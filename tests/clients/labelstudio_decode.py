"""Read our /labelstudio/predict answer the way Label Studio's own code reads it; run with
.venv-clients/bin/python (label-studio-sdk, as its users install it), never inside the service.

stdin: ``{"config": <labelling config XML>, "answer": <the /predict response body>}``. For each
region of ``answer["results"][0]["result"]``, its mask as Label Studio's SDK decodes it:
``brushlabels`` with ``label_studio_sdk.converter.brush.decode_rle`` (the alpha channel of the RGBA
image, as its ``decode_from_annotation`` takes it); ``bitmasklabels`` from the PNG data URL's alpha
(what Label Studio's editor draws). Also: ``LabelInterface(config).validate_prediction`` on the
prediction, and whether ``brush.mask2rle`` of the decoded mask gives back our bytes exactly.

Writes to ``argv[1]`` an .npz with ``mask_<i>`` (0/1, H x W) per region and ``report`` (JSON text).
"""

from __future__ import annotations

import base64
import io
import json
import sys

import numpy as np
from label_studio_sdk.converter import brush
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image


def main() -> None:
    given = json.load(sys.stdin)
    prediction = given["answer"]["results"][0]
    masks, report = {}, {"valid": LabelInterface(given["config"]).validate_prediction(
        {"result": prediction["result"], "score": prediction.get("score")}, return_errors=True), "regions": []}
    for index, region in enumerate(prediction["result"]):
        width, height = region["original_width"], region["original_height"]
        value = region["value"]
        if region["type"] == "brushlabels":
            decoded = brush.decode_rle(value["rle"]).reshape(height, width, 4)
            mask = decoded[:, :, 3]
            same_bytes = brush.mask2rle(mask) == value["rle"]
            channels_equal = bool(all(np.array_equal(decoded[:, :, c], mask) for c in range(3)))
        else:
            png = base64.b64decode(value["imageDataURL"].split(",", 1)[1])
            rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
            mask, same_bytes, channels_equal = rgba[:, :, 3], None, None
        masks[f"mask_{index}"] = (mask == 255).astype(np.uint8)
        report["regions"].append({"type": region["type"], "values": sorted(int(v) for v in np.unique(mask)),
                                  "mask2rle_same_bytes": same_bytes, "rgb_equal_alpha": channels_equal})
    np.savez(sys.argv[1], report=json.dumps(report), **masks)


if __name__ == "__main__":
    main()
