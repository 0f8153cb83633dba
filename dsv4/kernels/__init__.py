"""dsv4's native CPU kernels: quantized matmuls and the fused routed-experts op, on the weights' stored bytes.

The C sources in `src/` are built once per instruction set (avx512, avx2, generic C) the first time they are needed
and cached (see `toolchain`); the best set this CPU has is used. Without a compiler, or with DSV4_KERNELS=off, every
op reports unavailable and callers (dsv4.quant) run their PyTorch reference, after one warning saying how to get
the fast path. The PyTorch code stays the reference the kernels are tested against.

    backend() -> "avx512" | "avx2" | "generic" | None     the active instruction set (None: PyTorch path)
    set_backend(name) / using(name)                      choose one (tests force each, and None)
    supports(fmt) -> bool                                the active library computes this weight format
    matmul(fmt, weight, scale, n, k, x) -> fp32 [..., n]
    dequantize(fmt, weight, scale, n, k, rows, dtype) -> [r, k] fp32 or bf16
    moe(...)                                             see `moe` below
    index_topk(q, w, keys, lo, limit, heap_v, heap_i)    the lightning indexer's fused top-k, see below
    sinkhorn(m, iters, eps) -> fp32 [..., n, n]          mHC's Sinkhorn normalisation, see below
    set_threads(n), threads(), read_probe(buffer)
"""
from __future__ import annotations

import ctypes
import os
import warnings
from contextlib import contextmanager

import torch

from .toolchain import ISAS, BuildError, build, supported_isas

FORMAT_IDS = {"bf16": 0, "fp8": 1, "fp4": 2, "q8_0": 3, "q4_0": 4, "q5_0": 5, "q2_k": 6, "q3_k": 7, "q4_k": 8,
              "q5_k": 9, "q6_k": 10, "f32": 11}
_ERRORS = {-1: "format not supported by this build", -2: "shape not supported", -3: "out of memory",
           -4: "an expert id out of range, or an active expert whose weights were not passed"}
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


class KernelError(RuntimeError):
    """A native op rejected its arguments (the message names the op and the reason)."""


class Library:
    """One compiled instruction-set variant of the kernels, loaded with ctypes."""

    def __init__(self, isa: str):
        self.isa = isa
        self.lib = ctypes.CDLL(str(build(isa)))
        sig = {
            "dsv4k_matmul": (ctypes.c_int, [ctypes.c_int, _PTR, _PTR, _I64, _I64, _PTR, ctypes.c_int, _I64, _PTR]),
            "dsv4k_dequant": (ctypes.c_int, [ctypes.c_int, _PTR, _PTR, _I64, _I64, _I64, _I64, _PTR, ctypes.c_int]),
            "dsv4k_moe": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, _I64, _PTR, _I64, _I64, _PTR, ctypes.c_int,
                                         _I64, _I64, _PTR, _PTR, ctypes.c_float, ctypes.c_int, _PTR]),
            "dsv4k_index_topk": (ctypes.c_int, [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _PTR,
                                                _PTR]),
            "dsv4k_sinkhorn": (ctypes.c_int, [_PTR, _I64, _I64, _I64, ctypes.c_float]),
            "dsv4k_supports": (ctypes.c_int, [ctypes.c_int]),
            "dsv4k_set_threads": (ctypes.c_int, [ctypes.c_int]),
            "dsv4k_get_threads": (ctypes.c_int, []),
            "dsv4k_read_probe": (ctypes.c_uint64, [_PTR, _I64]),
            "dsv4k_isa": (ctypes.c_char_p, []),
        }
        for name, (res, args) in sig.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = res, args
        built = self.lib.dsv4k_isa().decode()
        if built != isa:
            raise BuildError(f"the {isa} build reports instruction set {built}: compiler flags not honoured")
        self.formats = {f for f, i in FORMAT_IDS.items() if self.lib.dsv4k_supports(i)}
        self.lib.dsv4k_set_threads(default_threads())


_libraries: dict[str, Library] = {}
_selected: list[str | None] = []  # [] until first use: then [the active isa or None]
_warned: set[str] = set()


def default_threads() -> int:
    """Physical cores this process may run on (hardware threads share a core's memory bandwidth and vector units)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    try:
        cores, cpu = set(), None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    cpu, phys = int(value), "0"
                elif key == "physical id":
                    phys = value.strip()
                elif key == "core id" and cpu in cpus:
                    cores.add((phys, value.strip()))
        return max(1, len(cores)) if cores else len(cpus)
    except OSError:
        return len(cpus)


def _load(isa: str) -> Library:
    if isa not in _libraries:
        _libraries[isa] = Library(isa)
    return _libraries[isa]


def _initial_backend() -> str | None:
    wanted = os.environ.get("DSV4_KERNELS", "auto").strip().lower()
    if wanted in ("off", "0", "none", "torch"):
        return None
    candidates = supported_isas() if wanted == "auto" else [wanted]
    try:
        return _load(candidates[0]).isa
    except (BuildError, OSError) as e:
        _warn_once(f"dsv4: native CPU kernels unavailable ({e}); running the PyTorch path, several times slower. "
                   "Install a C compiler (e.g. `apt install gcc`) to get the fast path.")
        return None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def library() -> Library | None:
    """The active kernel library, built on first use; None when the PyTorch path runs."""
    if not _selected:
        _selected.append(_initial_backend())
    return None if _selected[0] is None else _libraries[_selected[0]]


def backend() -> str | None:
    """The active instruction set ("avx512", "avx2", "generic"), or None for the PyTorch path."""
    lib = library()
    return lib.isa if lib else None


def describe() -> str:
    """One line for --stats and benchmarks: which path runs the quantized matmuls."""
    lib = library()
    n = threads()
    return f"native {lib.isa}, {n} thread{'s' if n != 1 else ''}" if lib else "PyTorch fallback"


def set_backend(isa: str | None) -> None:
    """Use instruction set `isa` (built if needed; BuildError if it cannot be), or None for the PyTorch path."""
    if isa is not None and isa not in ISAS:
        raise BuildError(f"unknown instruction set {isa!r}; known: {', '.join(ISAS)}")
    if isa is not None:
        _load(isa)
    _selected[:] = [isa]


@contextmanager
def using(isa: str | None):
    """Run a block with instruction set `isa` (None: the PyTorch path), restoring the previous choice after."""
    before = backend()
    set_backend(isa)
    try:
        yield
    finally:
        set_backend(before)


def supports(fmt: str) -> bool:
    """True when the active library computes weight format `fmt` natively."""
    lib = library()
    return lib is not None and fmt in lib.formats


def set_threads(n: int) -> int:
    """Use n threads of OpenMP's team (torch's) for the kernels; returns the count in effect (0: PyTorch path)."""
    lib = library()
    return lib.lib.dsv4k_set_threads(int(n)) if lib else 0


def threads() -> int:
    """Threads the kernels use (0 on the PyTorch path)."""
    lib = library()
    return lib.lib.dsv4k_get_threads() if lib else 0


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check(code: int, op: str, fmt: str) -> None:
    if code != 0:
        raise KernelError(f"{op}({fmt}): {_ERRORS.get(code, f'error {code}')}")


def _activations(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x as a contiguous CPU tensor the kernels read: fp32, or bf16 (flag 1)."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()
    return x.contiguous(), int(x.dtype == torch.bfloat16)


def matmul(fmt: str, weight: torch.Tensor, scale: torch.Tensor | None, n: int, k: int, x: torch.Tensor) -> torch.Tensor:
    """x [..., k] @ W^T for W [n, k] stored as `weight` (+ `scale`) in format `fmt` -> fp32 [..., n].

    fp8/fp4 quantize the activations per 128 as the reference GEMM does; the sums are fp32."""
    lib = library()
    x, is_bf16 = _activations(x)
    out = torch.empty(*x.shape[:-1], n, dtype=torch.float32)
    m = x.numel() // k if k else 0
    _check(lib.lib.dsv4k_matmul(FORMAT_IDS[fmt], _ptr(weight), _ptr(scale), n, k, _ptr(x), is_bf16, m, _ptr(out)),
           "matmul", fmt)
    return out


def dequantize(fmt: str, weight: torch.Tensor, scale: torch.Tensor | None, n: int, k: int, rows: slice,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows `rows` (a slice with step 1) of W [n, k] as stored: [r, k] in fp32, or rounded to bf16 (as .to() would
    round the fp32 values; exact for fp8/fp4/bf16)."""
    lib = library()
    r0, r1, step = rows.indices(n)
    if step != 1:
        raise KernelError(f"dequantize({fmt}): rows must be a contiguous slice, found step {step}")
    if dtype not in (torch.float32, torch.bfloat16):
        raise KernelError(f"dequantize({fmt}): output dtype float32 or bfloat16, found {dtype}")
    out = torch.empty(max(r1 - r0, 0), k, dtype=dtype)
    _check(lib.lib.dsv4k_dequant(FORMAT_IDS[fmt], _ptr(weight), _ptr(scale), n, k, r0, max(r1, r0), _ptr(out),
                                 int(dtype == torch.bfloat16)), "dequantize", fmt)
    return out


def read_probe(buffer: torch.Tensor) -> int:
    """Read every byte of a contiguous CPU tensor once with every pool thread (the memory-bandwidth probe)."""
    lib = library()
    return lib.lib.dsv4k_read_probe(_ptr(buffer), buffer.numel() * buffer.element_size())


def moe(fmt_in: str, fmt_out: str, ptrs: torch.Tensor, dim: int, inter: int, x: torch.Tensor, idx: torch.Tensor,
        weights: torch.Tensor, limit: float) -> torch.Tensor:
    """The routed experts of one MoE layer in one native call: fp32 [T, dim] = sum_k weights[t,k] E_{idx[t,k]}(x[t]).

    ptrs: int64 [E, 6], per expert the addresses of w1, w1.scale, w3, w3.scale, w2, w2.scale (0: no scale, or an
    expert not passed); w1/w3 [inter, dim] in fmt_in, w2 [dim, inter] in fmt_out. x [T, dim] fp32 or bf16 (bf16:
    every intermediate is rounded to bf16 as the PyTorch experts' outputs are); idx int64 / weights fp32 [T, k].
    """
    lib = library()
    x, is_bf16 = _activations(x)
    idx, weights = idx.to(torch.int64).contiguous(), weights.to(torch.float32).contiguous()
    out = torch.empty(x.shape[0], dim, dtype=torch.float32)
    _check(lib.lib.dsv4k_moe(FORMAT_IDS[fmt_in], FORMAT_IDS[fmt_out], ptrs.shape[0], _ptr(ptrs.contiguous()), dim,
                             inter, _ptr(x), is_bf16, x.shape[0], idx.shape[1], _ptr(idx), _ptr(weights),
                             float(limit), is_bf16, _ptr(out)), "moe", f"{fmt_in}/{fmt_out}")
    return out


def index_topk(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, lo: int, limit: torch.Tensor,
               heap_v: torch.Tensor, heap_i: torch.Tensor) -> None:
    """Merge one key tile into each query's running top-k, in place (the lightning indexer; reference:
    dsv4.model.indexer). q [B, S, H, d], w [B, S, H], keys [B, t, d] (entry ids lo..lo+t-1), limit [B, S] (entries
    with id >= limit are hidden); heap_v fp32 / heap_i int64 [B, S, k]: a min-heap per row of the kept (score, id)
    pairs, (-inf, -1) when empty. Start from all-empty heaps and pass tiles in ascending id order."""
    lib = library()
    B, S, H, d = q.shape
    if not (heap_v.is_contiguous() and heap_i.is_contiguous() and heap_v.dtype == torch.float32
            and heap_i.dtype == torch.int64):
        raise KernelError("index_topk: heaps must be contiguous fp32 / int64 tensors")
    q, w, keys = (t.to(torch.float32).contiguous() for t in (q, w, keys))
    limit = limit.to(torch.int64).contiguous()
    _check(lib.lib.dsv4k_index_topk(_ptr(q), _ptr(w), _ptr(keys), _ptr(limit), B, S, H, d, keys.shape[1], int(lo),
                                    heap_v.shape[-1], _ptr(heap_v), _ptr(heap_i)), "index_topk", "fp32")


def sinkhorn(m: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Sinkhorn normalisation of fp32 matrices m [..., n, n] (n <= 8) that are already softmax(logits) + eps: column
    normalisation, then iters-1 rounds of row and column normalisation, each sum in index order -- bitwise
    `dsv4.model.hyper.sinkhorn_numpy` after its softmax. Returns a new tensor."""
    lib = library()
    n = m.shape[-1]
    if m.dtype != torch.float32 or m.shape[-2] != n:
        raise KernelError(f"sinkhorn: fp32 [..., n, n] matrices, found {m.dtype} {list(m.shape)}")
    out = m.contiguous().clone()
    _check(lib.lib.dsv4k_sinkhorn(_ptr(out), out.numel() // max(n * n, 1), n, int(iters), float(eps)), "sinkhorn",
           "fp32")
    return out
