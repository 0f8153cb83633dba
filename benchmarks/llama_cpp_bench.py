"""llama.cpp (through `llama-cpp-python`'s low-level API) for bench_inference: the GGUF it reads, greedy
prefill / decode timings at batch 1 and 8, and its logits for the agreement check with dsv4.

The GGUF is dsv4's own export (`dsv4 convert --recipe BF16`, llama.cpp's `deepseek4` names and keys) of the
benchmark's checkpoint, whose weights are bf16 values, widened to F32 (lossless), so llama.cpp runs the same
weights at the same precision as the fp32 PyTorch frameworks.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import gguf
import numpy as np

N_SEQ = 8  # sequences decoded together (bench_inference.BATCH)


def export_gguf_f32(checkpoint: Path, path: Path) -> None:
    """`checkpoint` -> GGUF at `path` through dsv4's exporter (BF16 recipe), BF16 tensors then widened to F32."""
    from dsv4.weights.convert import convert_checkpoint

    bf16 = path.with_suffix(".bf16.gguf")
    convert_checkpoint(checkpoint, bf16, "BF16")
    reader = gguf.GGUFReader(bf16)
    writer = gguf.GGUFWriter(path, reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        if not field.name.startswith("GGUF.") and field.name != "general.architecture":
            sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        data = np.array(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    bf16.unlink()


class LlamaCpp:
    """One llama.cpp model and context with room for N_SEQ sequences of `n_ctx` tokens each, KV cache in F32."""

    def __init__(self, path: Path, n_ctx: int, threads: int):
        import llama_cpp as lc

        self.lc = lc
        self._quiet = lc.llama_log_callback(lambda level, text, user: None)  # kept alive: C holds the pointer
        lc.llama_log_set(self._quiet, ctypes.c_void_p())
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_seq_max = N_SEQ * n_ctx, N_SEQ
        params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = lc.GGML_TYPE_F32
        self.ctx = lc.llama_init_from_model(self.model, params)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self.batch = lc.llama_batch_init(n_ctx, 0, 1)

    def clear(self) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(self.ctx), True)

    def decode(self, tokens: list[int], pos: list[int], seqs: list[int], logits: list[bool]) -> np.ndarray:
        """One llama_decode of these tokens; the logits rows asked for, [n, vocab] (a copy)."""
        b = self.batch
        b.n_tokens = len(tokens)
        for i, (t, p, s, want) in enumerate(zip(tokens, pos, seqs, logits)):
            b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = t, p, 1, s, want
        if rc := self.lc.llama_decode(self.ctx, b):
            raise RuntimeError(f"llama_decode returned {rc}")
        rows = [i for i, want in enumerate(logits) if want]
        return np.stack([np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), (self.n_vocab,))
                         for i in rows])

    def prefill(self, row: list[int], seq: int = 0, all_logits: bool = False) -> np.ndarray:
        return self.decode(row, list(range(len(row))), [seq] * len(row), [all_logits] * (len(row) - 1) + [True])

    def step(self, tokens: list[int], pos: int) -> list[int]:
        """One greedy decode step of len(tokens) sequences (sequence i at position `pos`)."""
        n = len(tokens)
        return self.decode(tokens, [pos] * n, list(range(n)), [True] * n).argmax(-1).tolist()


def llama_cpp_times(path: Path, rows: list[list[int]], new: int, threads: int, timed, best) -> dict:
    """(ttft, decode seconds at batch 1, decode seconds at batch N_SEQ), as bench_inference's dsv4_times."""
    length = len(rows[0])
    llm = LlamaCpp(path, length + new + 1, threads)

    def run(batch: list[list[int]], tokens: int) -> tuple[float, float]:
        llm.clear()
        nexts: list[int] = []
        first = timed(lambda: nexts.extend(int(llm.prefill(r, s)[-1].argmax()) for s, r in enumerate(batch)))

        def rest() -> None:
            out = nexts
            for i in range(tokens - 1):
                out = llm.step(out, length + i)

        return first, timed(rest)

    run(rows[:1], 2)  # warm-up
    return {"ttft": best(lambda: run(rows[:1], 1)[0]), "decode_b1": best(lambda: run(rows[:1], new + 1)[1]),
            "decode_b8": best(lambda: run(rows, new + 1)[1])}


def llama_cpp_logits(path: Path, row: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `row`, [len, vocab]."""
    llm = LlamaCpp(path, len(row), 1)
    return llm.prefill(row, all_logits=True)
