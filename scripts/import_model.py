"""Import SAM 2.1 weights into the BentoML model store, so that `bentoml build` packages them.

    python scripts/import_model.py --model facebook/sam2.1-hiera-large          # from Hugging Face
    python scripts/import_model.py --model facebook/sam2.1-hiera-tiny --checkpoint my.pt --name my-sam2

Prints the tag; build with it: scripts/build_bento.sh <tag>. The model's labels record the variant
and where the weights came from; the random test weights of scripts/make_test_checkpoint.py are
labelled `weights: random-test-weights` and stored as `<variant>-random-test` unless --name says
otherwise, so that they never pass for the real model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sam2_api.config import MODEL_IDS
from sam2_api.errors import ModelLoadError
from sam2_api.model.weights import hugging_face_checkpoint, is_random_test_checkpoint, store_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="facebook/sam2.1-hiera-tiny", choices=MODEL_IDS,
                        help="the SAM 2.1 variant (picks the config)")
    parser.add_argument("--checkpoint", type=Path, help="a local .pt instead of downloading")
    parser.add_argument("--name", help="model name in the store; default: the variant, e.g. sam2.1-hiera-tiny")
    parser.add_argument("--source", help="what to record as the weights' source label")
    args = parser.parse_args()

    variant = args.model.split("/")[-1]
    if args.checkpoint is None:
        try:
            checkpoint = hugging_face_checkpoint(args.model, remedy="give a local file with --checkpoint FILE.pt")
        except ModelLoadError as exc:
            raise SystemExit(f"error: {exc}") from None
        source = args.source or f"huggingface:{args.model}"
    else:
        checkpoint, source = args.checkpoint, args.source or f"file:{args.checkpoint.name}"
    name = args.name or (f"{variant}-random-test" if is_random_test_checkpoint(checkpoint) else variant)
    print(store_weights(args.model, checkpoint, name, source).tag)


if __name__ == "__main__":
    main()
