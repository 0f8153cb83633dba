"""`dsv4 convert SRC DST --recipe R`: a checkpoint (official FP8/FP4, transformers save_pretrained, or dsv4) -> a
dsv4 checkpoint under recipe R (a directory loadable by dsv4.load_model), or a GGUF file when DST ends in .gguf.
Streams tensor by tensor; DST appears only once complete."""
from __future__ import annotations

import sys

from dsv4.config import ConfigError
from dsv4.quant import RECIPES
from dsv4.quant.errors import QuantError
from dsv4.weights.checkpoint import CheckpointError
from dsv4.weights.convert import convert_checkpoint
from dsv4.weights.gguf_export import GGUFExportError


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a checkpoint to a quantization recipe or to GGUF",
                              description=__doc__)
    p.add_argument("src", help="checkpoint directory (config.json + safetensors) or a .gguf file written by dsv4")
    p.add_argument("dst", help="new directory, or a .gguf file (must not exist)")
    p.add_argument("--recipe", required=True, choices=list(RECIPES), help="weight format of each tensor group")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        convert_checkpoint(args.src, args.dst, args.recipe)
    except (CheckpointError, ConfigError, QuantError, GGUFExportError, FileExistsError) as e:
        print(f"dsv4 convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst} ({args.recipe})")
    if args.dst.endswith(".gguf"):
        print("GGUF holds the main model, as llama.cpp reads it: the MTP module (speculative decoding) stays in "
              "checkpoint directories")
    return 0
