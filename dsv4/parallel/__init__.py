"""Model parallelism on torch.distributed: the model split across ranks (`tensor_parallel`), or data-parallel
attention with expert-parallel MoE (`expert_parallel`), the reference's per-rank tensor layout (`layout`),
collectives (`comm`), the engine in lockstep on every rank (`lockstep`) or per rank (`data_parallel`)."""
from dsv4.parallel.comm import Group, init_from_env
from dsv4.parallel.layout import ParallelLayoutError, check_world, rank_file
from dsv4.parallel.expert_parallel import shard_experts
from dsv4.parallel.tensor_parallel import shard_model

__all__ = ["Group", "ParallelLayoutError", "check_world", "init_from_env", "rank_file", "shard_experts", "shard_model"]
