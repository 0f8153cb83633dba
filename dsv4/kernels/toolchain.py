"""Building the native kernel library: which instruction sets this CPU has, the compiler flags for each, and a
compiled-once cache of the shared library (keyed by the sources, the flags and the compiler).

The library is plain C with a C ABI (loaded with ctypes), so it does not depend on torch's ABI or headers and
builds in a few seconds on first use. Without a compiler `build` raises BuildError and dsv4 runs the PyTorch path.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent / "src"
# Best first. Each entry: the /proc/cpuinfo flags it needs and the compiler flags that enable it.
ISAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "avx512": (("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "avx512_vnni", "avx2", "fma", "f16c"),
               ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mavx512vnni", "-mavx2",
                "-mfma", "-mf16c")),
    "avx2": (("avx2", "fma", "f16c"), ("-mavx2", "-mfma", "-mf16c")),
    "generic": ((), ()),
}
BASE_FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden", "-fno-math-errno")
OPENMP = ("-fopenmp",)  # threads: OpenMP (the libgomp torch loads); dropped for compilers without it


class BuildError(RuntimeError):
    """The native library cannot be built or loaded here; the message says why and what to install."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supported_isas() -> list[str]:
    """Instruction sets this machine can run, best first ("generic" always)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["generic"]
    flags = cpu_flags()
    return [name for name, (needs, _) in ISAS.items() if set(needs) <= flags]


def find_compiler() -> str:
    """The C compiler: $CC, else cc, gcc or clang on PATH."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    raise BuildError("no C compiler found (set CC, or install one: `apt install gcc`, `xcode-select --install`)")


def cache_dir() -> Path:
    base = os.environ.get("DSV4_KERNEL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dsv4"
    return Path(base) / "kernels"


def _version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"compiler {cc} does not run ({e})") from None


def build(isa: str) -> Path:
    """The shared library for `isa`, compiled now unless an identical build is cached. Returns its path."""
    if isa not in ISAS:
        raise BuildError(f"unknown instruction set {isa!r}; known: {', '.join(ISAS)}")
    cc = find_compiler()
    sources = sorted(SOURCE_DIR.glob("*.c"))
    if not sources:
        raise BuildError(f"the kernel sources are missing from {SOURCE_DIR} (a broken install?)")
    flags = [*BASE_FLAGS, *ISAS[isa][1]]
    key = hashlib.sha256()
    for f in sorted(SOURCE_DIR.glob("*.[ch]")):
        key.update(f.name.encode() + f.read_bytes())
    key.update(" ".join([cc, *flags, *OPENMP, _version(cc)]).encode())
    out = cache_dir() / f"libdsv4k-{isa}-{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several processes may start at once: one compiles, the others wait
        if out.exists():
            return out
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        os.close(fd)
        try:
            for openmp in (OPENMP, ()):
                cmd = [cc, *flags, *openmp, *map(str, sources), "-o", tmp, "-lm"]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if proc.returncode == 0:
                    break
            if proc.returncode != 0:
                raise BuildError(f"compiling the {isa} kernels failed:\n{' '.join(cmd)}\n{proc.stderr[-4000:]}")
            os.replace(tmp, out)  # atomic: a half-written library is never picked up
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out
