"""dsv4: DeepSeek-V4 end to end in Python."""
from dsv4.cache import make_cache
from dsv4.config import ModelConfig
from dsv4.weights.loader import load_model

__all__ = ["ModelConfig", "load_model", "make_cache"]
