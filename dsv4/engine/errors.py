"""Typed errors of the engine; the server maps each to an HTTP status."""


class EngineError(ValueError):
    """Base of the engine's request errors."""


class SamplingError(EngineError):
    """A sampling parameter outside its range; `field` names it."""

    def __init__(self, field: str, expected: str, found: object):
        self.field = field
        super().__init__(f"{field}: expected {expected}, found {found!r}")


class GrammarError(SamplingError):
    """A grammar (JSON schema) the compiler cannot build: malformed or unsupported; `field` names it."""

    def __init__(self, field: str, reason: str):
        self.field = field
        EngineError.__init__(self, f"{field}: expected a JSON schema the grammar compiler supports; {reason}")


class ContextLengthError(EngineError):
    """The prompt does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, context: int):
        # Anthropic's wording, which agent clients recognise and show as such
        super().__init__(f"prompt is too long: {prompt_tokens} tokens > {context - 1} maximum (the model's context "
                         f"holds {context} tokens and at least one must be generated)")


class CacheBudgetError(EngineError):
    """The request's KV cache at its full length would not fit the engine's cache byte budget."""

    def __init__(self, prompt_tokens: int, max_tokens: int, need: int, budget: int):
        super().__init__(f"max_tokens: a prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} needs a KV "
                         f"cache of {need / 2**20:,.1f} MiB, over the engine's cache budget of "
                         f"{budget / 2**20:,.1f} MiB (EngineConfig.cache_bytes, --cache-bytes); ask for fewer tokens")


class QueueFullError(EngineError):
    """The engine's waiting queue is at capacity; retry later."""

    def __init__(self, limit: int):
        super().__init__(f"the request queue is full ({limit} waiting); retry later")


class ModelNotFoundError(FileNotFoundError):
    """No model at the given path (or no bundled demo model yet)."""
