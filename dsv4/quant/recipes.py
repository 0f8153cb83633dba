"""Named quantization recipes: the weight format of each tensor group, in the spirit of llama.cpp's mixes.

Groups (see `transform.GROUP_PATTERNS`): attention (incl. indexer wq_b and MTP e/h_proj), shared_expert,
routed_expert, embed, head. The small sensitive tensors (norms, mHC, attn_sink, router, compressor, indexer
weights_proj) are in no group: every recipe keeps them at the precision the model built them in (spec section 1.4).
As in llama.cpp's MoE handling, the K-quant mixes spend more bits on the always-active, small tensors (attention,
shared expert, head) and the nominal type on the routed experts, which hold ~95% of the weights.
"""
from dataclasses import dataclass, fields

from .codecs import FORMATS, PLAIN, bytes_per_weight
from .errors import UnknownFormatError


@dataclass(frozen=True)
class Recipe:
    """Format of each quantizable group; every value must be one of `codecs.FORMATS`."""

    name: str
    attention: str
    shared_expert: str
    routed_expert: str
    embed: str
    head: str

    def __post_init__(self):
        for group in GROUPS:
            fmt = getattr(self, group)
            if fmt not in FORMATS:
                raise UnknownFormatError(f"recipe {self.name}: group {group} has unknown format {fmt!r}; "
                                         f"valid formats: {', '.join(FORMATS)}")

    def format_of(self, group: str, row_length: int | None = None) -> str:
        """Format of `group`'s matrices; with `row_length` (a matrix's in_features), a K-quant that cannot tile
        the row gets its KQUANT_FALLBACK instead."""
        if group not in GROUPS:
            raise UnknownFormatError(f"recipe {self.name}: unknown group {group!r}; groups: {', '.join(GROUPS)}")
        fmt = getattr(self, group)
        if row_length is not None and fmt in KQUANT_FALLBACK and row_length % QK_K:
            return KQUANT_FALLBACK[fmt]
        return fmt

    @property
    def quantizes(self) -> bool:
        """Whether any group is held in a quantized format (False for the plain float recipes)."""
        return any(getattr(self, g) not in PLAIN for g in GROUPS)

    def bytes_per_weight(self, group: str) -> float:
        """Storage bytes per weight of `group` under this recipe (for the memory planner)."""
        return bytes_per_weight(self.format_of(group))


QK_K = 256  # K-quant super-block: rows must be a whole number of them
# What llama.cpp stores instead when a row is not (llama_tensor_get_type: Q2_K/Q3_K -> IQ4_NL, Q4_K -> Q5_0,
# Q5_K -> Q5_1, Q6_K -> Q8_0). Without IQ4_NL and Q5_1 we take their nearest sizes: q4_0 (4.5 bits), q5_0 (5.5).
KQUANT_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_0", "q6_k": "q8_0"}
GROUPS = tuple(f.name for f in fields(Recipe) if f.name != "name")
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("BF16", "bf16", "bf16", "bf16", "bf16", "bf16"),
    Recipe("FP8", "fp8", "fp8", "fp8", "bf16", "bf16"),  # the -Base "FP8 mixed" layout
    Recipe("FP4", "fp8", "fp8", "fp4", "bf16", "bf16"),  # the official instruct release
    # The official release plus FP8 (same 128x128 block codec) embedding and head: for small models, where the
    # vocabulary-sized matrices dominate the bytes. Still the official file format (every FP8 tensor has its .scale).
    Recipe("FP4-FP8EH", "fp8", "fp8", "fp4", "fp8", "fp8"),
    # The official FP4 experts with every other matrix in BF16 (FP8 -> BF16 is lossless): what llama.cpp's own
    # conversion of the release holds (GGUF MXFP4 experts), so `dsv4 convert ... X.gguf --recipe MXFP4` writes it.
    Recipe("MXFP4", "bf16", "bf16", "fp4", "bf16", "bf16"),
    Recipe("Q8_0", "q8_0", "q8_0", "q8_0", "q8_0", "q8_0"),
    Recipe("Q6_K", "q6_k", "q6_k", "q6_k", "q6_k", "q6_k"),
    Recipe("Q5_K_M", "q6_k", "q6_k", "q5_k", "q5_k", "q6_k"),
    Recipe("Q4_K_M", "q6_k", "q6_k", "q4_k", "q4_k", "q6_k"),
    Recipe("Q3_K_M", "q4_k", "q5_k", "q3_k", "q3_k", "q6_k"),
    Recipe("Q2_K", "q4_k", "q3_k", "q2_k", "q2_k", "q6_k"),
]}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name` (exact, case-sensitive), or UnknownFormatError listing the valid names."""
    if name not in RECIPES:
        raise UnknownFormatError(f"unknown quantization recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
