"""Write a seeded, random-init SAM 2.1 checkpoint in Meta's checkpoint format.

The file holds *random test weights*: it exists so that tests and benchmarks can load a
checkpoint offline through the same path a user's real checkpoint takes
(``SAM2_CHECKPOINT``). Its masks are not segmentations of anything, and the file says so: beside
Meta's ``model`` key it carries a mark that makes the service log a warning at start-up and
``scripts/import_model.py`` label it.

    python scripts/make_test_checkpoint.py            # -> checkpoints/sam2.1_hiera_tiny.RANDOM-TEST-WEIGHTS.pt
    python scripts/make_test_checkpoint.py --size small   # -> …sam2.1_hiera_small… (any name SAM2_MODELS takes)
    python scripts/make_test_checkpoint.py --model-id facebook/sam2.1-hiera-large  # -> …sam2.1_hiera_large…

On the 2-core machine: tiny 4 s and 156 MB, small 5 s and 184 MB. The file is written under a
temporary name and renamed, so that a reader (another test run) never sees half of it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, build_sam2

from sam2_api.model.weights import RANDOM_WEIGHTS_MARK
from sam2_api.sizes import model_id



def default_output(model_id: str) -> Path:
    """checkpoints/<Meta's file name for ``model_id``, less .pt>.RANDOM-TEST-WEIGHTS.pt"""
    _, release_file = HF_MODEL_ID_TO_FILENAMES[model_id]
    return Path("checkpoints") / (Path(release_file).stem + ".RANDOM-TEST-WEIGHTS.pt")


def write_random_checkpoint(output: Path, model_id: str, seed: int) -> Path:
    config_file, _ = HF_MODEL_ID_TO_FILENAMES[model_id]
    torch.manual_seed(seed)
    model = build_sam2(config_file, ckpt_path=None, device="cpu")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Meta's release files are {"model": state_dict}; build_sam2 reads exactly that key.
    partial = output.with_name(f".{output.name}.{os.getpid()}.partial")
    torch.save({"model": model.state_dict(), RANDOM_WEIGHTS_MARK: {"seed": seed, "model_id": model_id}}, partial)
    partial.replace(output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="default: checkpoints/<model>.RANDOM-TEST-WEIGHTS.pt")
    parser.add_argument("--model-id", default="facebook/sam2.1-hiera-tiny",
                        choices=sorted(k for k in HF_MODEL_ID_TO_FILENAMES if "sam2.1" in k))
    parser.add_argument("--size", help="the size by any name SAM2_MODELS takes (tiny, hiera_small, …); "
                        "instead of --model-id")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args()
    if args.size is not None:
        args.model_id = model_id(args.size) or parser.error(f"--size {args.size!r} is not a SAM 2.1 size")
    args.output = args.output or default_output(args.model_id)
    if args.output.exists() and not args.force:
        print(f"{args.output} exists; keeping it (use --force to rewrite)")
    else:
        path = write_random_checkpoint(args.output, args.model_id, args.seed)
        print(f"wrote RANDOM test weights for {args.model_id} (seed {args.seed}) to {path}")
    model = "" if args.model_id == "facebook/sam2.1-hiera-tiny" else f"SAM2_MODEL={args.model_id} "
    print(f"serve them (masks are meaningless blobs): SAM2_CHECKPOINT={args.output} {model}./scripts/serve.sh")


if __name__ == "__main__":
    main()
