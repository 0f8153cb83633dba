"""`dsv4 inspect PATH [--json]`: a checkpoint's config, parameter counts, stored bytes per tensor group and recipe,
from its headers alone."""
from __future__ import annotations

import json
import sys

from dsv4.config import ConfigError
from dsv4.weights.checkpoint import CheckpointError
from dsv4.weights.inspect import describe

_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "n_routed_experts",
                "num_experts_per_tok", "num_nextn_predict_layers", "expert_dtype")


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="config, parameter counts, bytes per group and recipe of a checkpoint",
                              description=__doc__)
    p.add_argument("path", help="checkpoint directory")
    p.add_argument("--json", action="store_true", help="print one JSON object (full config included)")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        info = describe(args.path)
    except (CheckpointError, ConfigError) as e:
        print(f"dsv4 inspect: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def format_info(info: dict) -> str:
    lines = [f"{info['path']}: recipe {info['recipe']}, {info['params']:,} parameters, "
             f"{info['bytes'] / 2**20:,.2f} MiB in {info['shards']} shard(s)"]
    lines += [f"  {k} = {info['config'][k]}" for k in _CONFIG_KEYS]
    lines.append(f"  {'group':16s} {'params':>14s} {'MiB':>10s} {'bytes/param':>11s}  format")
    for group, g in info["groups"].items():
        fmt = ", ".join(info["formats"].get(group, ["(as stored)"]))
        lines.append(f"  {group:16s} {g['params']:>14,} {g['bytes'] / 2**20:>10.2f} {g['bytes'] / g['params']:>11.4f}  {fmt}")
    return "\n".join(lines)
