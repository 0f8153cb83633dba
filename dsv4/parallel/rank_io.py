"""The reference's per-rank checkpoint layout, written and read one rank at a time.

A per-rank directory (`dsv4 convert SRC DST --model-parallel N`) holds `model{r}-mp{N}.safetensors` for r < N, each
with rank r's slice (`layout.rank_slice`) of every tensor under its official name, in the stored format (FP8 wo_a
stays FP8 + scale: dsv4 computes it in bf16 itself, where the reference's convert dequantizes it); config.json (the
model's own: its reader rejects unknown keys, so the world size is recorded in each file's safetensors metadata,
{"model_parallel": "N", "rank": "r"}, as well as in its name); quantization.json for the GGUF-format recipes; and
the source's tokenizer.json / tokenizer_config.json when it has them.

`read_rank_state(path, rank, world)` reads one rank's tensors from such a directory (its own file only) or from a
full checkpoint directory (positioned reads of the rank's rows, columns and experts only).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from dsv4.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.parallel.layout import ParallelLayoutError, check_split, check_world, rank_file, rank_slice
from dsv4.quant import Recipe
from dsv4.weights.atomic import atomic_path
from dsv4.weights.checkpoint import RECIPE_FILE, Checkpoint, CheckpointError, open_file
from dsv4.weights.layout import Entry, plan
from dsv4.weights.safetensors_io import SafetensorsError, SafetensorsFile, Spec, header_bytes
from dsv4.weights.sources import ANY_FORMAT, CheckpointSource, stored_specs
from dsv4.weights.writer import OFFICIAL, _tensors, checkpoint_config

RANK_FILE = re.compile(r"model(?P<rank>\d+)-mp(?P<world>\d+)\.safetensors")
WORLD_KEY = "model_parallel"  # safetensors metadata: the world size a rank file was written for
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


# ---- writing ---------------------------------------------------------------------------------------------------

def write_rank_checkpoint(dst: str | Path, source: CheckpointSource, model: Transformer, world: int,
                          recipe: Recipe | None = None) -> None:
    """Write `source` (laid out for the meta `model`) as the per-rank directory `dst` for `world` ranks, atomically:
    each tensor as stored (recipe None) or converted to `recipe` first, then split. Raises ParallelLayoutError
    before writing anything when the model or a quantized matrix does not split into `world` ranks."""
    cfg = model.cfg
    check_world(cfg, world)
    if recipe is None:
        entries = stored_units(source, model)
        specs = {k: source.ckpt.spec(source.stored[k]) for e in entries for k in stored_specs(e, e.fmt)}
        config = cfg.to_dict()
        recipe_name = source.ckpt.recipe.name if source.ckpt.recipe is not None else None
    else:
        entries = plan(model, recipe)
        specs = {k: v for e in entries for k, v in e.specs().items()}
        config = checkpoint_config(cfg.to_dict(), recipe)
        recipe_name = recipe.name if recipe.name not in OFFICIAL and recipe.name != "BF16" else None
    for e in entries:
        if e.is_matrix:
            check_split(e.name, e.shape, e.fmt, world)
    with atomic_path(dst) as tmp, tqdm(total=len(entries), desc=f"writing {Path(dst).name} ({world} ranks)",
                                       unit="tensor", disable=None) as bar:
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if recipe_name is not None:
            (tmp / RECIPE_FILE).write_text(json.dumps({"recipe": recipe_name}))
        if source.ckpt.path.is_dir():
            for f in TOKENIZER_FILES:
                if (source.ckpt.path / f).is_file():
                    shutil.copyfile(source.ckpt.path / f, tmp / f)
        tensors = _stored(entries, source, bar) if recipe is None else _tensors(entries, source, bar)
        write_rank_files(tmp, specs, tensors, world, cfg.n_routed_experts)


def stored_units(source: CheckpointSource, model: Transformer) -> list[Entry]:
    """The model's units (layout.Entry) with each matrix's `fmt` as the checkpoint stores it (sources.FLOAT for any
    plain float dtype)."""
    return [Entry(e.name, e.shape, source.formats[e.name], e.dtype) for e in plan(model, ANY_FORMAT)]


def _stored(entries: list[Entry], source: CheckpointSource, bar) -> Iterator[tuple[str, torch.Tensor]]:
    """Each stored tensor of `entries` as the checkpoint holds it, whole, under its official name."""
    for e in entries:
        for name in stored_specs(e, e.fmt):
            yield name, source.ckpt.read(source.stored[name])
        bar.update()


def write_rank_files(directory: Path, specs: dict[str, Spec], tensors: Iterable[tuple[str, torch.Tensor]],
                     world: int, n_experts: int) -> None:
    """Write `model{r}-mp{world}.safetensors` for every rank r into `directory`. `tensors` (official name, whole
    tensor) come in `specs` order; each is split by rank_slice as it arrives, so peak memory is about one tensor."""
    per_rank = [_rank_specs(specs, r, world, n_experts) for r in range(world)]
    order = iter(specs.items())
    with ExitStack() as stack:
        files = [stack.enter_context(open(directory / rank_file(r, world), "wb")) for r in range(world)]
        for r, f in enumerate(files):
            f.write(header_bytes(per_rank[r], {"format": "pt", WORLD_KEY: str(world), "rank": str(r)}))
        for name, tensor in tensors:
            want, (shape, dtype) = next(order, (None, (None, None)))
            if name != want or tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise SafetensorsError(f"{directory}: tensor {name!r} {tensor.dtype} {tuple(tensor.shape)} does not "
                                       f"match the next expected entry {want!r} {dtype} {shape}")
            for r, f in enumerate(files):
                part = rank_slice(name, tensor, r, world, n_experts)
                if part is not None:
                    f.write(part.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        if next(order, None) is not None:
            raise SafetensorsError(f"{directory}: fewer tensors written than the headers list")


def _rank_specs(specs: dict[str, Spec], rank: int, world: int, n_experts: int) -> dict[str, Spec]:
    """Rank `rank`'s (shape, dtype) of each tensor it holds, in `specs` order (computed on meta tensors)."""
    out = {}
    for name, (shape, dtype) in specs.items():
        part = rank_slice(name, torch.empty(shape, dtype=dtype, device="meta"), rank, world, n_experts)
        if part is not None:
            out[name] = (tuple(part.shape), dtype)
    return out


# ---- reading ---------------------------------------------------------------------------------------------------

def read_rank_state(path: str | Path, rank: int, world: int, experts_only: bool = False) -> dict[str, torch.Tensor]:
    """Rank `rank` of `world`'s tensors {official name: tensor in its stored dtype}: split tensors as their slice
    (e.g. `wq_b.weight` [n_heads * head_dim / world, q_lora_rank]), the rank's routed experts whole, the rest
    replicated; with `experts_only` nothing but the routed experts is split. `path`: a per-rank directory written
    for `world` ranks (tensor-parallel layout), or a full checkpoint directory."""
    return dict(iter_rank_state(path, rank, world, experts_only))


def iter_rank_state(path: str | Path, rank: int, world: int,
                    experts_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """`read_rank_state` one tensor at a time (peak memory about one tensor beyond what the caller keeps)."""
    path = Path(path)
    if not path.is_dir():
        raise ParallelLayoutError(f"{path}: not a checkpoint directory (per-rank reads need safetensors files; "
                                  "convert a GGUF file to a directory first)")
    worlds = rank_worlds(path)
    if worlds and experts_only:
        raise ParallelLayoutError(f"{path}: per-rank files hold the tensor-parallel split; data-parallel attention "
                                  "with expert-parallel MoE loads from the full checkpoint (or use --parallel tp)")
    if worlds:
        return _read_rank_file(path, rank, world, worlds)
    return _read_full(path, rank, world, experts_only)


def rank_worlds(path: Path) -> set[int]:
    """The world sizes of the per-rank files (`model{r}-mp{N}.safetensors`) in directory `path`; empty for a full
    checkpoint."""
    return {int(m["world"]) for f in path.iterdir() if (m := RANK_FILE.fullmatch(f.name))}


def _read_rank_file(path: Path, rank: int, world: int, worlds: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    if world not in worlds:
        raise ParallelLayoutError(f"{path}: a per-rank checkpoint written for {_sizes(worlds)} ranks "
                                  f"(model*-mp{min(worlds)}.safetensors) cannot be read by a world of {world} ranks; "
                                  f"run with {_sizes(worlds)} ranks or convert the full checkpoint for {world}")
    check_world(ModelConfig.from_file(path / "config.json"), world, rank)
    f = path / rank_file(rank, world)
    if not f.is_file():
        raise ParallelLayoutError(f"{path}: rank {rank}'s shard {f.name} is missing")
    sf = open_file(f)
    found = (sf.metadata.get(WORLD_KEY), sf.metadata.get("rank"))
    if found != (str(world), str(rank)):
        raise ParallelLayoutError(f"{f}: its metadata says rank {found[1]} of {found[0]}, expected rank {rank} of "
                                  f"{world}")
    return ((name, read_view(sf, name, None)) for name in sf.keys())


def _sizes(worlds: set[int]) -> str:
    return " and ".join(map(str, sorted(worlds)))


def _read_full(path: Path, rank: int, world: int, experts_only: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Rank `rank`'s part of a full checkpoint, validated like the loader (names, shapes, formats) from the headers
    before anything is read."""
    ckpt = Checkpoint(path)
    cfg = ckpt.model_config()
    check_world(cfg, world, rank, experts_only)
    with torch.device("meta"):
        model = Transformer(cfg)
    source = CheckpointSource(ckpt, model)
    entries = stored_units(source, model)
    for e in entries:
        if e.is_matrix and not experts_only:
            check_split(e.name, e.shape, e.fmt, world)
    return _read_parts(ckpt, source, entries, rank, world, cfg.n_routed_experts, experts_only)


def _read_parts(ckpt: Checkpoint, source: CheckpointSource, entries: list[Entry], rank: int, world: int,
                n_experts: int, experts_only: bool) -> Iterator[tuple[str, torch.Tensor]]:
    files: dict[Path, SafetensorsFile] = {}
    for e in entries:
        for name in stored_specs(e, e.fmt):
            stored = source.stored[name]
            shape, dtype = ckpt.spec(stored)
            view = rank_slice(name, torch.empty(shape, dtype=dtype, device="meta"), rank, world, n_experts,
                              experts_only)
            if view is not None:
                f = ckpt.files[stored]
                if f not in files:
                    files[f] = open_file(f)
                yield name, read_view(files[f], stored, view)


def read_view(sf: SafetensorsFile, name: str, view: torch.Tensor | None) -> torch.Tensor:
    """Tensor `name` of `sf`, or only the part that `view` (a meta view, e.g. a narrow, of a tensor of its shape)
    selects, by one positioned read per contiguous run of bytes: [*view.shape] in the stored dtype."""
    shape, dtype = sf.spec(name)
    if view is None:
        view = torch.empty(shape, dtype=dtype, device="meta")
    begin = sf.data_start + sf.entries[name]["data_offsets"][0]
    size = dtype.itemsize
    out = np.empty(view.numel() * size, dtype=np.uint8)
    buf, pos = memoryview(out), 0
    fd = os.open(sf.path, os.O_RDONLY)
    try:
        for offset, count in _runs(view):
            n = count * size
            got = os.preadv(fd, [buf[pos:pos + n]], begin + offset * size)
            if got != n:
                raise CheckpointError(f"{sf.path}: tensor {name!r}: short read ({got} of {n} bytes)")
            pos += n
    finally:
        os.close(fd)
    return torch.from_numpy(out).view(dtype).reshape(view.shape)


def _runs(view: torch.Tensor) -> Iterator[tuple[int, int]]:
    """(element offset, element count) of each contiguous run of `view`, a view of a contiguous tensor, in order."""
    shape, stride = view.shape, view.stride()
    k, inner = len(shape), 1
    while k > 0 and (stride[k - 1] == inner or shape[k - 1] == 1):  # dims k.. form one contiguous run
        inner *= shape[k - 1]
        k -= 1
    for index in itertools.product(*map(range, shape[:k])):
        yield view.storage_offset() + sum(i * s for i, s in zip(index, stride)), inner
