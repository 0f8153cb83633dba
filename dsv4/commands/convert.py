"""`dsv4 convert SRC DST --recipe R`: a checkpoint (official FP8/FP4, transformers save_pretrained, or dsv4) -> a
dsv4 checkpoint under recipe R (a directory loadable by dsv4.load_model), or a GGUF file when DST ends in .gguf.
`--model-parallel N`: DST is the reference's per-rank layout instead (model{r}-mp{N}.safetensors for r < N, each
rank's slice of every tensor, for N ranks), the tensors as SRC stores them or, with --recipe, converted first.
Streams tensor by tensor; DST appears only once complete."""
from __future__ import annotations

import sys

from dsv4.config import ConfigError
from dsv4.parallel.layout import ParallelLayoutError
from dsv4.quant import RECIPES
from dsv4.quant.errors import QuantError
from dsv4.weights.checkpoint import CheckpointError
from dsv4.weights.convert import convert_checkpoint
from dsv4.weights.gguf_export import GGUFExportError


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert a checkpoint to a quantization recipe, to GGUF, or to "
                              "per-rank files for model parallelism", description=__doc__)
    p.add_argument("src", help="checkpoint directory (config.json + safetensors) or a .gguf file written by dsv4")
    p.add_argument("dst", help="new directory, or a .gguf file (must not exist)")
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="weight format of each tensor group (required unless --model-parallel)")
    p.add_argument("--model-parallel", type=int, metavar="N",
                   help="write model{rank}-mp{N}.safetensors, one file per rank of N (tensor parallel)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.recipe is None and args.model_parallel is None:
        print("dsv4 convert: give --recipe, --model-parallel N, or both", file=sys.stderr)
        return 2
    try:
        convert_checkpoint(args.src, args.dst, args.recipe, model_parallel=args.model_parallel)
    except (CheckpointError, ConfigError, QuantError, GGUFExportError, ParallelLayoutError, FileExistsError) as e:
        print(f"dsv4 convert: {e}", file=sys.stderr)
        return 1
    if args.model_parallel is not None:
        print(f"wrote {args.dst}: model{{0..{args.model_parallel - 1}}}-mp{args.model_parallel}.safetensors "
              f"({args.recipe or 'formats as stored'})")
        return 0
    print(f"wrote {args.dst} ({args.recipe})")
    if args.dst.endswith(".gguf"):
        print("GGUF holds the main model, as llama.cpp reads it: the MTP module (speculative decoding) stays in "
              "checkpoint directories")
    return 0
