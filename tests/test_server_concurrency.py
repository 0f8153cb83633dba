"""16 concurrent seeded streaming requests all finish, and each streams what the same request gives alone."""
import asyncio

import openai

from dsv4.engine import EngineConfig
from dsv4.server.run import BackgroundServer, make_state
from tiny_models import random_model
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)


def request(i: int) -> dict:
    messages = [{"role": "user", "content": f"Question number {i}: " + "why? " * (i % 5)}]
    return dict(model="tiny", messages=messages, max_tokens=8, seed=100 + i,
                extra_body={"top_k": 64, "thinking": {"type": "disabled" if i % 2 else "enabled"}})


async def stream_text(client: openai.AsyncOpenAI, i: int) -> tuple[str, str]:
    text, finish = [], None
    async for chunk in await client.chat.completions.create(**request(i), stream=True):
        if chunk.choices:
            delta = chunk.choices[0].delta
            text.append((getattr(delta, "reasoning_content", None) or "") + "|" + (delta.content or ""))
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def test_sixteen_concurrent_streams_equal_each_request_alone():
    model = random_model(vocab_size=129280, max_position_embeddings=256, num_hash_layers=0, seed=1)
    state = make_state(model, model_name="tiny", config=EngineConfig(max_running=16, prefill_chunk=64))
    batch_sizes = []
    forward = state.loop.engine.runner.forward

    def recording(ids, cache, all_logits=False, step=False):
        batch_sizes.append(len(ids))
        return forward(ids, cache, all_logits, step)

    state.loop.engine.runner.forward = recording
    with BackgroundServer(state) as srv:
        async def together():
            client = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
            return await asyncio.gather(*(stream_text(client, i) for i in range(16)))

        async def alone():
            client = openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
            return [await stream_text(client, i) for i in range(16)]

        concurrent = asyncio.run(together())
        sequential = asyncio.run(alone())
    assert all(finish == "length" for _, finish in concurrent)
    assert max(batch_sizes) >= 8  # the streams really were decoded together
    assert concurrent == sequential
