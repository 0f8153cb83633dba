"""Reasoning-effort ladders of the released V4 checkpoints (spec §2.5, §3.2).

Effort is plain text put right after BOS in think mode. The April preview and
the 0731 release give the same request value different prompts, so the
ladder is chosen by checkpoint, never by model family.
"""

from dataclasses import dataclass

from dsv4.chat.errors import ChatRequestError

MAX_APRIL = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the root cause, "
    "rigorously stress-testing your logic against all potential paths, edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, considered "
    "alternative, and rejected hypothesis to ensure absolutely no assumption is left unchecked.\n\n"
)
MAX_0731 = (
    "Reasoning Effort: Beyond maximum \u2014 exhaustive, relentless, and uncompromising.\n"
    "You MUST reason with the utmost depth and rigor, leaving absolutely nothing to chance: exhaustively decompose "
    "the problem into its most fundamental components, trace every causal chain to its root, and resolve the "
    "underlying cause rather than any surface symptom.\n"
    "Do not stop reasoning until you have independently verified the solution from multiple angles and are certain "
    "that no assumption remains unchecked and no error remains undiscovered.\n\n"
)


@dataclass(frozen=True)
class EffortLadder:
    """Rungs (effort name -> prompt prefix), the default rung, and request aliases onto rungs."""

    checkpoint: str
    rungs: dict[str, str]
    default: str
    aliases: dict[str, str]

    def prefix(self, effort: str | None) -> str:
        """Prompt prefix for a request's `reasoning_effort` (None -> the default rung)."""
        rung = self.default if effort is None else self.aliases.get(effort, effort)
        if rung not in self.rungs:
            known = sorted({*self.rungs, *self.aliases})
            raise ChatRequestError("reasoning_effort", f"one of {known} or None ({self.checkpoint} checkpoint)", effort)
        return self.rungs[rung]


# April preview: only `max` adds text; DeepSeek's launch mapping low/medium -> high, xhigh -> max.
PREVIEW = EffortLadder(
    checkpoint="preview",
    rungs={"high": "", "max": MAX_APRIL},
    default="high",
    aliases={"minimal": "high", "low": "high", "medium": "high", "xhigh": "max"},
)
# 0731 release: three rungs, default low; DeepSeek's later mapping (xhigh -> high, ultra -> max).
RELEASE_0731 = EffortLadder(
    checkpoint="0731",
    rungs={"low": "", "high": MAX_APRIL, "max": MAX_0731},
    default="low",
    aliases={"minimal": "low", "medium": "high", "xhigh": "high", "ultra": "max"},
)

LADDERS = {"preview": PREVIEW, "0731": RELEASE_0731}
# Exact Hugging Face repository ids -> checkpoint (Flash and Pro share the encoder).
MODEL_CHECKPOINTS = {
    "deepseek-ai/DeepSeek-V4-Flash": "preview",
    "deepseek-ai/DeepSeek-V4-Pro": "preview",
    "deepseek-ai/DeepSeek-V4-Flash-0731": "0731",
}


def ladder_for(checkpoint: str) -> EffortLadder:
    """The ladder of a checkpoint name (`preview`, `0731`) or an exact HF repository id."""
    name = MODEL_CHECKPOINTS.get(checkpoint, checkpoint)
    if name not in LADDERS:
        raise ChatRequestError("checkpoint", f"one of {sorted({*LADDERS, *MODEL_CHECKPOINTS})}", checkpoint)
    return LADDERS[name]
