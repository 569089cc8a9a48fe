"""Import SAM 2.1 weights into the BentoML model store, so that `bentoml build` packages them.

    python scripts/import_model.py --model facebook/sam2.1-hiera-large          # from Hugging Face
    python scripts/import_model.py --model facebook/sam2.1-hiera-tiny --checkpoint my.pt --name my-sam2

Prints the tag; build with it: SAM2_BENTO_MODEL=<tag> bentoml build (scripts/build_bento.sh does).
The model's labels record the variant and where the weights came from.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import bentoml
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

from sam2_api.config import MODEL_IDS
from sam2_api.model import BENTO_CHECKPOINT_FILE


def import_weights(model_id: str, checkpoint: Path | None, name: str | None, source: str | None) -> bentoml.Model:
    config, checkpoint_name = HF_MODEL_ID_TO_FILENAMES[model_id]
    if checkpoint is None:
        from huggingface_hub import hf_hub_download

        checkpoint = Path(hf_hub_download(repo_id=model_id, filename=checkpoint_name))
        source = source or f"huggingface:{model_id}"
    name = name or model_id.split("/")[-1]
    labels = {"variant": model_id.split("/")[-1], "source": source or f"file:{checkpoint.name}"}
    with bentoml.models.create(name, labels=labels, metadata={"config": config, "hf_id": model_id}) as model:
        shutil.copyfile(checkpoint, model.path_of(BENTO_CHECKPOINT_FILE))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="facebook/sam2.1-hiera-tiny", choices=MODEL_IDS,
                        help="the SAM 2.1 variant (picks the config)")
    parser.add_argument("--checkpoint", type=Path, help="a local .pt instead of downloading")
    parser.add_argument("--name", help="model name in the store; default: the variant, e.g. sam2.1-hiera-tiny")
    parser.add_argument("--source", help="what to record as the weights' source label")
    args = parser.parse_args()
    model = import_weights(args.model, args.checkpoint, args.name, args.source)
    print(model.tag)


if __name__ == "__main__":
    main()
