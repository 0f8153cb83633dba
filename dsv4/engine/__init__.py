"""The inference engine: sequences, scheduler, batch cache, runner, sampler, speculative decoding (MTP).

Library first: `Engine.step()` is the token-step core; `generate.stream_text` / `generate_text` /
`stream_chat` build text on it; `EngineLoop` runs an engine in a background thread for the server.
"""
from dsv4.engine.engine import Engine, EngineConfig
from dsv4.engine.errors import (ContextLengthError, EngineError, GrammarError, ModelNotFoundError, QueueFullError,
                                SamplingError)
from dsv4.engine.generate import generate_text, stream_chat, stream_text, stream_tokens
from dsv4.engine.grammar import GrammarSpec, compile_grammar
from dsv4.engine.loop import EngineLoop
from dsv4.engine.model_path import default_model_path, load_for_inference, resolve_model_path
from dsv4.engine.params import SamplingParams
from dsv4.engine.sequence import Sequence, TokenEvent

__all__ = [
    "ContextLengthError", "Engine", "EngineConfig", "EngineError", "EngineLoop", "GrammarError", "GrammarSpec",
    "ModelNotFoundError", "QueueFullError", "SamplingError", "SamplingParams", "Sequence", "TokenEvent",
    "compile_grammar", "default_model_path", "generate_text", "load_for_inference", "resolve_model_path",
    "stream_chat", "stream_tokens", "stream_text",
]
