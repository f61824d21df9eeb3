"""The frontend's server-sent events as data: when tokens arrive faster than the stream goes
out, a chunk carries every token already there (the backlog does not grow a chunk a token),
and the text and the end are what arrived, in order."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from engine.runners.fake import word_tokenizer
from serving.openai_api import app as frontend
from serving.openai_api.protocol import ChatTemplate, ResponseWriter, parse_completion


class _Request:
    async def is_disconnected(self) -> bool:
        return False


def _queued_run(events) -> frontend._Run:
    """A `_Run` whose events are already queued (no server, no thread)."""
    run = object.__new__(frontend._Run)
    run.inbox, run.cancelled, run.details = (
        frontend._Inbox(asyncio.get_running_loop()),
        threading.Event(),
        None,
    )
    for e in events:
        run.inbox.put(e)
    return run


def _chunks(events, late=()) -> list[dict]:
    """The SSE payloads of a one-choice completion stream whose run has `events` queued at the
    start and `late` ones put after its first chunk went out."""
    model = frontend.ServedModel("gpt2", "1", word_tokenizer(), ChatTemplate(), 64, 64)
    gen = parse_completion({"model": "gpt2", "prompt": "t1 t2", "stream": True, "max_tokens": 8})

    async def collect():
        choice = frontend._Choice(0, gen.prompt, gen, model)
        first, *rest = events
        choice.run = _queued_run(rest)
        out, todo = [], list(late)
        async for raw in frontend._events(_Request(), [choice], [first], gen, ResponseWriter(gen)):
            body = raw.decode().removeprefix("data: ").strip()
            out.append(body if body == "[DONE]" else json.loads(body))
            while todo:
                choice.run.inbox.put(todo.pop(0))
        return out

    return asyncio.run(collect())


def test_tokens_already_arrived_go_out_in_one_chunk_and_the_end_after_them():
    chunks = _chunks([("delta", " t3"), ("delta", " t4"), ("delta", " t5"), ("end", None)])
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert texts == [" t3 t4 t5", ""] and chunks[-1] == "[DONE]"
    assert chunks[-2]["choices"][0]["finish_reason"] is not None


def test_a_chunk_already_sent_is_not_merged_into():
    chunks = _chunks([("delta", " t3")], late=[("delta", " t4"), ("end", None)])
    assert [c["choices"][0]["text"] for c in chunks[:2]] == [" t3", " t4"] and chunks[-1] == "[DONE]"


def test_an_error_after_tokens_follows_them():
    chunks = _chunks([("delta", " t3"), ("delta", " t4"), ("error", "the server went away")])
    assert chunks[0]["choices"][0]["text"] == " t3 t4"
    assert chunks[1]["error"]["message"].endswith("the server went away") and chunks[2] == "[DONE]"


def test_the_inbox_passes_a_threads_events_in_order_without_losing_any():
    """A worker thread's events reach the loop in order and none is lost, whether the loop
    waits for each (`get`) or takes what is there (`take_ready`) while the thread appends."""

    async def consume() -> list[int]:
        inbox = frontend._Inbox(asyncio.get_running_loop())
        worker = threading.Thread(target=lambda: [inbox.put(i) for i in range(20000)] + [inbox.put(None)])
        worker.start()
        got: list[int] = []
        while not got or got[-1] is not None:
            item = await inbox.get(5.0)
            assert item is not frontend._NOTHING, "an event was put but none came"
            got.append(item)
            if len(got) % 3 == 0:
                got.extend(inbox.take_ready())
        worker.join()
        return got

    assert asyncio.run(consume()) == [*range(20000), None]


def test_the_inbox_says_when_nothing_came_and_a_cancelled_wait_raises():
    async def check():
        inbox = frontend._Inbox(asyncio.get_running_loop())
        assert await inbox.get(0.01) is frontend._NOTHING
        waiting = asyncio.ensure_future(inbox.get(60))
        await asyncio.sleep(0)  # the get is now waiting
        inbox.cancel_wait()
        try:
            await waiting
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("a cancelled wait returned")
        inbox.put("after")  # the inbox still works
        assert await inbox.get(60) == "after"

    asyncio.run(check())


async def _settle():
    """Let the loop run what is ready (tasks started, futures' callbacks)."""
    for _ in range(10):
        await asyncio.sleep(0)


class _Index(frontend.TritonModels):
    """`TritonModels` whose index asks are counted and answered when the test says so."""

    def __init__(self):
        super().__init__("unused:0", None)
        self.asks, self.version, self.answer = 0, "1", None

    async def text_models(self):
        self.asks += 1
        asked = frontend.time.monotonic()
        self.answer = asyncio.get_running_loop().create_future()
        answer = await self.answer  # gpt2's version, or the whole index
        served = answer if isinstance(answer, dict) else {"gpt2": answer}
        if asked >= self._served_at:
            self._served, self._served_at = served, asked
        return sorted(served.items())


def test_the_index_is_asked_once_for_concurrent_requests_then_again_only_in_the_background(monkeypatch):
    async def scenario():
        models = _Index()
        first = [asyncio.ensure_future(models._index()) for _ in range(3)]
        await _settle()
        assert models.asks == 1  # three requests, none known yet: one ask, all wait for it
        models.answer.set_result("1")
        assert [await f for f in first] == [{"gpt2": "1"}] * 3
        assert await models._index() == {"gpt2": "1"} and models.asks == 1  # young: not asked
        monkeypatch.setattr(frontend, "INDEX_REFRESH_S", 0.0)
        # old: the request takes what is known at once, and an ask starts beside it
        assert await models._index() == {"gpt2": "1"}
        await _settle()
        assert models.asks == 2
        assert await models._index() == {"gpt2": "1"} and models.asks == 2  # one ask at a time
        # fresh while that background ask (started before the call) runs: it waits for an ask
        # started after the call, so a switch the earlier ask may have missed is seen
        fresh = asyncio.ensure_future(models._index(fresh=True))
        await _settle()
        models.answer.set_result("1")
        await _settle()
        assert not fresh.done() and models.asks == 3
        models.answer.set_result("2")
        assert await fresh == {"gpt2": "2"}
        assert await models._index() == {"gpt2": "2"}

    asyncio.run(scenario())


def test_a_model_missing_from_the_index_last_asked_is_asked_for_again_before_a_404():
    async def scenario():
        models = _Index()
        first = asyncio.ensure_future(models._index())
        await _settle()
        models.answer.set_result("1")
        await first
        models._served_at = frontend.time.monotonic()  # young: no background ask
        # "gpt3" not in the index last asked: asked again at once, and still not there: a 404
        looked = asyncio.ensure_future(models.get("gpt3"))
        await _settle()
        assert models.asks == 2
        models.answer.set_result("1")
        with pytest.raises(frontend.APIError) as err:
            await looked
        assert err.value.status == 404
        # loaded since: the index asked again has it, and the request goes on
        models._loaded[("gpt3", "1")] = loaded = object()
        looked = asyncio.ensure_future(models.get("gpt3"))
        await _settle()
        models.answer.set_result({"gpt2": "1", "gpt3": "1"})
        assert await looked is loaded and models.asks == 3

    asyncio.run(scenario())
