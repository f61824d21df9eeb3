"""The GPT-2 generation engine: requests in, text out through a `Sink`.

One step is plan, execute, update:

    plan = scheduler.schedule()          # plain data: the step's runner calls (engine.plan)
    for forward in plan.forwards:        # in order: a prefill chunk, then the decode rows
        scheduler.update(forward, runner.execute(forward))  # advance, sample, detokenize, finish, free

The runner (`engine.runners`) holds the model and its KV cache; the scheduler
(`engine.scheduler`) holds the requests and their slots. `submit` and `cancel` may be called
from any thread; `step` and `run` run on one thread (the generation loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from engine.config import EngineConfig
from engine.detokenizer import Detokenizer
from engine.metrics import EngineStats
from engine.output import OutputProcessor
from engine.plan import Forward, ForwardOutput
from engine.request_schema import RequestError, SamplingParams
from engine.runners.base import Runner
from engine.sampler import TokenHistory
from engine.scheduler import Scheduler
from engine.structured import Grammars
from engine.types import Request, Sink, Status

logger = logging.getLogger(__name__)

CANCEL_CHECK_EVERY = 8  # steps between asking whether clients went away (an IPC round trip)


class Engine:
    def __init__(
        self,
        runner: Runner,
        tokenizer,
        config: EngineConfig,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.runner, self.tokenizer, self.config, self.clock = runner, tokenizer, config, clock
        self.eos = runner.info.get("eos_token_id")
        self.max_len = runner.caps.max_len
        self.stats = EngineStats()  # for the metrics endpoint (engine.metrics)
        self.output = OutputProcessor(tokenizer, self.stats, clock, self.max_len)
        self.grammars = Grammars(tokenizer, self.eos, int(runner.info["vocab_size"]))
        self.scheduler = Scheduler(config, runner.caps, self.output, self.stats, sink or Sink(), clock)

    @property
    def sink(self) -> Sink:
        return self.scheduler.sink

    @sink.setter
    def sink(self, sink: Sink) -> None:
        self.scheduler.sink = sink

    @property
    def running(self) -> list[Request]:
        with self.scheduler.lock:
            return list(self.scheduler.running)

    @property
    def waiting(self) -> int:
        return self.scheduler.waiting

    @property
    def free_slots(self) -> int:
        return self.scheduler.free_slots

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def kv_usage(self) -> float:
        """The share of the KV cache in use (slots, or blocks for a block runner)."""
        return self.scheduler.kv_usage()

    def requests(self) -> list[Request]:
        """Every unfinished request: running ones, then waiting ones."""
        return self.scheduler.requests()

    # -- requests in -------------------------------------------------------------------------
    def encode_prompt(self, prompt: str, params: SamplingParams) -> list[int]:
        if not prompt:
            raise RequestError("text_input must be a non-empty string")
        return self.check_prompt(self.tokenizer.encode(prompt).ids, params)

    def check_prompt(self, ids: list[int], params: SamplingParams) -> list[int]:
        """The prompt's ids if it fits the window with room for `max_tokens`; RequestError
        naming the field otherwise."""
        window = self.max_len
        limit = window - 1
        if not ids:
            raise RequestError("text_input encodes to no tokens")
        if len(ids) > limit:
            raise RequestError(
                f"text_input has {len(ids)} tokens; the limit is {limit} (context window {window})"
            )
        if len(ids) + params.max_tokens > window:
            raise RequestError(
                f"max_tokens {params.max_tokens} + {len(ids)} prompt tokens exceed the context window of "
                f"{window}; max_tokens must be <= {window - len(ids)} for this prompt"
            )
        vocab = int(self.runner.info["vocab_size"])
        if params.end_id is not None and params.end_id >= vocab:
            raise RequestError(f"end_id must be a token id in 0..{vocab - 1}, got {params.end_id}")
        if any(t >= vocab for t in params.stop_token_ids):
            raise RequestError(f"stop_token_ids must be token ids in 0..{vocab - 1}")
        return list(ids)

    def submit(self, prompt_ids: list[int], params: SamplingParams, context=None) -> Request:
        """Queue a request (prompt already checked). QueueFullError when every slot is busy
        and `max_queue` requests already wait: the running ones are not disturbed."""
        now = self.clock()
        req = Request(
            list(prompt_ids), params, deadline=now + self.config.max_request_seconds, context=context
        )
        req.arrived = now
        req.detok = Detokenizer(self.tokenizer, params.stop, params.min_tokens)
        req.rng = None if params.greedy else np.random.Generator(np.random.PCG64(params.seed))
        req.eos = self.eos if params.end_id is None else params.end_id
        req.history = TokenHistory(req.prompt_ids) if params.penalized else None
        req.bad_ids = self.output.bad_word_ids(params.bad_words)
        if params.logprobs is not None:
            req.logprobs = []
        if params.prompt_logprobs is not None:
            req.prompt_logprobs = [None]  # the first prompt token: nothing predicts it
        if params.structured_output is not None:
            try:
                req.grammar = self.grammars.matcher(params.structured_output)
            except ValueError as exc:
                raise RequestError(str(exc)) from None
        self.scheduler.add(req)
        self.stats.prompt_tokens += len(req.prompt_ids)
        return req

    def cancel(self, req: Request) -> None:
        """Ends `req` at the next step (any thread); its slot is freed then."""
        self.scheduler.cancel(req)

    # -- the loop ----------------------------------------------------------------------------
    def step(self) -> bool:
        """Plan, execute, update. False: nothing to do."""
        plan = self.scheduler.schedule()
        self._release(plan.releases)  # pages freed while planning, before any call writes there
        if not plan:
            return False
        for copy in plan.copies:  # cached prefixes into the slots of the requests admitted
            try:
                self.runner.copy_slot(copy)
            except Exception as exc:  # noqa: BLE001 - that request only
                self.scheduler.copy_failed(copy, f"internal error copying KV cache between slots: {exc}")
        for forward in plan.forwards:  # each call's logits are read before the next call
            self.scheduler.update(forward, self._execute(forward))
        # The pages of the requests that ended in this step go back now, not in the next step's
        # plan: that is where a request arriving next would wait for them (0.2 ms on a slot).
        self._release(self.scheduler.take_releases())
        return True

    def _release(self, slots) -> None:
        for slot in slots:
            try:
                self.runner.release_slot(slot)
            except Exception:  # noqa: BLE001 - the memory stays in use, the engine serves on
                logger.exception("giving KV slot %d's pages back failed", slot)

    def _execute(self, forward: Forward) -> ForwardOutput:
        """One runner call, timed on the engine's clock; a failure ends its requests (in
        `update`), not the engine."""
        started = self.clock()
        try:
            out = self.runner.execute(forward)
        except Exception as exc:  # noqa: BLE001 - reported to each request of the call
            return ForwardOutput.failed(f"internal error during generation: {exc}")
        out.ms = (self.clock() - started) * 1e3
        return out

    def run(
        self,
        wake: threading.Event,
        is_cancelled: Callable[[Request], bool],
        stop: threading.Event,
        on_error: Callable[[BaseException], None] | None = None,
        shutdown_message: str = "server is shutting down; retry on another server",
        after_step: Callable[[], None] | None = None,
    ) -> None:
        """The generation loop: wait for work (`wake` is set on each submit), step, and every
        `CANCEL_CHECK_EVERY` steps end the requests whose clients went away. Returns when
        `stop` is set, ending what is left with `shutdown_message`. `after_step`: called
        after each step, on this thread (the Triton adapter's first-token yield)."""
        steps = 0
        while not stop.is_set():
            try:
                if not self.has_work():
                    wake.wait(timeout=0.1)
                    wake.clear()
                    continue
                self.step()
                if after_step is not None:
                    after_step()
                steps += 1
                if steps % CANCEL_CHECK_EVERY == 0:
                    for req in self.requests():
                        if is_cancelled(req):
                            self.cancel(req)
            except Exception as exc:  # noqa: BLE001 - the engine fails only the requests concerned
                if on_error is not None:
                    on_error(exc)
                time.sleep(0.01)
        self.abort_all(shutdown_message)

    def abort_all(self, message: str) -> None:
        """Ends every running and waiting request with `message` (shutdown)."""
        self.scheduler.abort_all(message)

    # -- offline use (tests, profiling) --------------------------------------------------------
    def run_until_done(self, requests: list[Request]) -> None:
        while any(r.status is not Status.FINISHED for r in requests):
            self.step()

    def generate_ids(self, prompt_ids: list[int], params: SamplingParams) -> list[int]:
        req = self.submit(self.check_prompt(prompt_ids, params), params)
        self.run_until_done([req])
        return req.tokens
