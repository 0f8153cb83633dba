"""The V4 prompt renderer: native V4 messages -> prompt (spec §2).

Byte-for-byte the behaviour of DeepSeek's reference encoder (`encoding_dsv4.py`),
re-implemented. Input roles are V4's own: `system`, `developer` (V4's
search-agent user role), `user`, `latest_reminder`, `assistant`, `tool`. The
OpenAI-facing normalisation (developer -> system, request tools, argument
coercion, edge cases) is in `request.py`.
"""

from collections.abc import Callable

from dsv4.chat import tokens
from dsv4.chat.dsml import render_tool_calls, render_tools, to_json
from dsv4.chat.errors import ChatRequestError
from dsv4.chat.prompt import Prompt

_USER_ROLES = ("user", "developer")
# (prompt text before an assistant turn, the turn) -> (text, ids) the model generated there, or None.
Recall = Callable[[str, dict], "tuple[str, list[int]] | None"]
_RESPONSE_FORMAT = "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"


def render_v4(messages: list[dict], *, thinking: bool, effort_prefix: str = "", drop_thinking: bool = True,
              recall: Recall | None = None) -> Prompt:
    """Render native V4 `messages` (string `content`, OpenAI-shaped `tool_calls`) after BOS.

    thinking: think mode (`<｜Assistant｜><think>`) vs chat mode (`</think>`).
    effort_prefix: text put right after BOS in think mode (see `effort.py`).
    drop_thinking: drop reasoning of turns before the last user message;
        forced off when any message carries `tools`.
    recall: asked for each finished assistant turn; when it returns the tokens the model generated right after
        this very prompt text for an equivalent message, they replace the turn's rendering (see `Prompt.generated`).
    """
    turns = _order_tool_results(_merge_tool_results(messages))
    keep_all = not drop_thinking or any(m.get("tools") for m in turns)
    if thinking and not keep_all:
        turns = _drop_history_thinking(turns)
    prompt = Prompt()
    prompt.mark(tokens.BOS)
    if thinking:
        prompt.mark(effort_prefix)
    last_user = _last_user_index(turns)
    for i in range(len(turns)):
        keep_reasoning = keep_all or i > last_user
        turn = turns[i]
        spliced = (recall(prompt.text, turn) if recall is not None and turn.get("role") == "assistant"
                   and not turn.get("wo_eos") else None)
        if spliced is not None:
            prompt.generated(*spliced)
        else:
            prompt.extend(_render_turn(i, turns, thinking=thinking, keep_reasoning=keep_reasoning))
        prompt.extend(_transition(i, turns, thinking=thinking, opens_thinking=keep_all or i >= last_user))
    return prompt


def _merge_tool_results(messages: list[dict]) -> list[dict]:
    """Fold `tool` messages and consecutive user messages into user turns made of blocks."""
    turns: list[dict] = []
    for msg in messages:
        role = msg.get("role")
        if role == "tool":
            block = {"type": "tool_result", "id": msg.get("tool_call_id") or "", "content": msg.get("content") or ""}
        elif role == "user":
            block = {"type": "text", "content": msg.get("content") or ""}
        else:
            turns.append(msg)
            continue
        previous = turns[-1] if turns and "blocks" in turns[-1] else None
        # A task turn stays alone; tool results still join it (reference behaviour).
        if previous is not None and (role == "tool" or ("task" not in previous and "task" not in msg)):
            previous["blocks"].append(block)
        else:
            extras = {k: msg[k] for k in ("task", "wo_eos") if k in msg}
            turns.append({"role": "user", "blocks": [block], **extras})
    return turns


def _order_tool_results(turns: list[dict]) -> list[dict]:
    """Stable-sort each user turn's tool results into the preceding assistant's call order."""
    order: dict[str, int] = {}
    for turn in turns:
        if turn.get("role") == "assistant" and turn.get("tool_calls"):
            order = {call.get("id"): i for i, call in enumerate(turn["tool_calls"]) if call.get("id")}
        elif "blocks" in turn and order:
            results = sorted((b for b in turn["blocks"] if b["type"] == "tool_result"), key=lambda b: order.get(b["id"], 0))
            it = iter(results)
            turn["blocks"] = [next(it) if b["type"] == "tool_result" else b for b in turn["blocks"]]
    return turns


def _last_user_index(turns: list[dict]) -> int:
    return max((i for i, t in enumerate(turns) if t.get("role") in _USER_ROLES), default=-1)


def _drop_history_thinking(turns: list[dict]) -> list[dict]:
    """Before the last user turn: strip assistant reasoning and delete developer turns."""
    last_user = _last_user_index(turns)
    kept = []
    for i, turn in enumerate(turns):
        if i >= last_user or turn.get("role") not in ("assistant", "developer"):
            kept.append(turn)
        elif turn["role"] == "assistant":
            kept.append({k: v for k, v in turn.items() if k != "reasoning_content"})
    return kept


def _render_turn(i: int, turns: list[dict], *, thinking: bool, keep_reasoning: bool) -> Prompt:
    turn, role = turns[i], turns[i].get("role")
    if role == "system":
        return _render_instructions(turn, marker="")
    if role == "developer":
        if not turn.get("content"):
            raise ChatRequestError(f"messages[{i}].content", "non-empty text for a developer message", turn.get("content"))
        return _render_instructions(turn, marker=tokens.USER)
    if role == "user":
        return _render_user(turn)
    if role == "latest_reminder":
        prompt = Prompt()
        prompt.mark(tokens.LATEST_REMINDER)
        prompt.user(turn.get("content") or "")
        return prompt
    if role == "assistant":
        after_task = i > 0 and "task" in turns[i - 1]
        return _render_assistant(turn, reasoning=thinking and keep_reasoning and not after_task)
    raise ChatRequestError(f"messages[{i}].role", "system, developer, user, latest_reminder, assistant or tool", role)


def _render_instructions(turn: dict, *, marker: str) -> Prompt:
    """System (no marker) or developer (`<｜User｜>`) text plus its tools and response format."""
    prompt = Prompt()
    prompt.mark(marker)
    prompt.user(turn.get("content") or "")
    if turn.get("tools"):
        prompt.mark("\n\n")
        prompt.extend(render_tools([tool["function"] for tool in turn["tools"]]))
    if turn.get("response_format"):
        prompt.mark("\n\n" + _RESPONSE_FORMAT)
        prompt.user(to_json(turn["response_format"]))
    return prompt


def _render_user(turn: dict) -> Prompt:
    prompt = Prompt()
    prompt.mark(tokens.USER)
    for i, block in enumerate(turn["blocks"]):
        prompt.mark("\n\n" if i else "")
        if block["type"] == "tool_result":
            prompt.mark("<tool_result>")
            prompt.user(block["content"])
            prompt.mark("</tool_result>")
        else:
            prompt.user(block["content"])
    return prompt


def _render_assistant(turn: dict, *, reasoning: bool) -> Prompt:
    """`[reasoning</think>]content[\\n\\n DSML block]<EOS>` (no EOS for a prefix to continue)."""
    prompt = Prompt()
    if reasoning:
        prompt.user(turn.get("reasoning_content") or "")
        prompt.mark(tokens.END_THINK)
    prompt.user(turn.get("content") or "")
    if turn.get("tool_calls"):
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in turn["tool_calls"]]
        prompt.extend(render_tool_calls(calls))
    if not turn.get("wo_eos"):
        prompt.mark(tokens.EOS)
    return prompt


def _transition(i: int, turns: list[dict], *, thinking: bool, opens_thinking: bool) -> Prompt:
    """What follows turn `i` when the assistant (or a reminder) speaks next, or nothing follows."""
    prompt = Prompt()
    if i + 1 < len(turns) and turns[i + 1].get("role") not in ("assistant", "latest_reminder"):
        return prompt
    task = turns[i].get("task")
    if task is not None:
        if task not in tokens.TASK_TOKENS:
            raise ChatRequestError(f"messages[{i}].task", f"one of {sorted(tokens.TASK_TOKENS)}", task)
        if task == "action":
            prompt.mark(tokens.ASSISTANT + (tokens.THINK if thinking else tokens.END_THINK))
        prompt.mark(tokens.TASK_TOKENS[task])
    elif turns[i].get("role") in _USER_ROLES:
        prompt.mark(tokens.ASSISTANT + (tokens.THINK if thinking and opens_thinking else tokens.END_THINK))
    return prompt
