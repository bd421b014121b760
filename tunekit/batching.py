"""Continuous batching over an :class:`~tunekit.serve.AdapterPool`: concurrent requests, for
different adapters and for the base, share each forward pass.

One worker thread owns the model. Between two decoding steps it lets waiting requests join (their
prompts run through one padded prefill forward) and drops the ones that finished or whose client
went away, so a long answer never holds up short ones. Rows of one batch name their adapter per
row (PEFT's mixed-adapter batches, ``adapter_names=``); adapters PEFT cannot mix (DoRA) get a batch
of their own, stepped beside the mixed one; so do adapters with ``modules_to_save`` or trainable
tokens, whose PEFT wrappers cannot sit in a batch with adapters they do not hold. Each request keeps its own sampling settings
(temperature, top_p, seed, max_tokens, stop strings) and its own stream of text pieces.

The KV cache is one ``DynamicCache`` per batch, left-padded: a joining prefill is padded to the
batch's length (or the batch to its), finished rows are cut out and columns of padding only are
trimmed. Positions are passed per row, so a padded row computes exactly what it would alone.

Preparing a request (downloading its adapter, reading its tokenizer, encoding the prompt through
:func:`tunekit.chat.encode_prompt`) runs in loader threads; the worker only ever installs an
adapter whose files are local, between steps, so a cold adapter never stalls the others.

Example:
    >>> pool = tunekit.AdapterPool(base)                                  # doctest: +SKIP
    >>> handle = pool.submit("Hi!", adapter="alice/support-lora", max_tokens=64)
    >>> for piece in handle:
    ...     print(piece, end="")
    >>> handle.result().finish_reason
    'stop'
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import chat as chatlib
from .errors import ConfigError

# The scheduler drives an ``AdapterPool`` (tunekit.serve) through its batching hooks (hold,
# activate, release, tokenizer_for, model); it does not import it, as serve imports this module.
AdapterPool = Any

log = logging.getLogger(__name__)

BASE_ROW = "__base__"  # PEFT's name for "no adapter on this row" in a mixed batch


@dataclass(frozen=True)
class Sampling:
    """How one request is decoded; honoured per row inside a shared batch.

    Attributes:
        max_tokens: the most tokens to generate (the end-of-turn token included).
        temperature: 0 for greedy decoding, > 0 to sample.
        top_p: nucleus sampling threshold (when sampling).
        seed: makes a sampled reply reproducible (each request has its own generator).
        stop: strings that end the reply; the text is cut before the first one found.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        problems = []
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            problems.append(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.temperature is None or self.temperature < 0:
            problems.append(f"temperature must be 0 or more, got {self.temperature!r}")
        if self.top_p is None or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class Completion:
    """A finished reply.

    Attributes:
        text: the reply (stripped, cut before a stop string).
        token_ids: the generated ids (the end-of-turn token included when it came).
        prompt_tokens: the templated prompt's length.
        completion_tokens: ``len(token_ids)``.
        finish_reason: ``"stop"`` (end of turn or a stop string), ``"length"`` (max_tokens or
            the context ran out) or ``"cancelled"`` (the handle was cancelled).
        tool_calls: with tools, the calls read from the reply (``text`` is then its content).
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    tool_calls: list[chatlib.ToolCall] = field(default_factory=list)


class Handle:
    """One submitted request: iterate it for the text pieces as they are generated, or call
    :meth:`result` for the whole reply. Leaving the iteration early (a client that went away)
    cancels the request and frees its row in the batch."""

    def __init__(self, request: _Request, scheduler: Scheduler):
        self._request, self._scheduler = request, scheduler
        self._completion: Completion | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """Whether the reply has ended (finished, cut, cancelled or failed)."""
        return self._request.finish is not None

    @property
    def prompt_tokens(self) -> int | None:
        """The prompt's length once it is encoded (None before)."""
        return self._request.prompt_tokens

    @property
    def plan(self) -> chatlib.ToolPlan | None:
        """How a request with tools is rendered and read (:func:`tunekit.chat.plan_tools`); None
        for a plain chat. Waits until the request is prepared. With a plan the pieces are the raw
        reply after the plan's prefill, special tokens kept (a call marker may be one): read them
        through :class:`tunekit.chat.ContentFilter` or :class:`tunekit.chat.ReplyStream`."""
        self._request.staged.wait()
        return self._request.plan

    def __iter__(self) -> Iterator[str]:
        if self._completion is not None or self._error is not None:
            return  # already read whole by result(): the pieces are gone, the text is in result()
        finished = False
        try:
            while True:
                kind, value = self._request.events.get()
                if kind == "piece":
                    yield value
                    continue
                finished = True
                if kind == "done":
                    self._completion = value
                    return
                self._error = value
                raise value
        finally:
            if not finished:
                self.cancel()

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the whole reply.

        Raises:
            TimeoutError: not finished within ``timeout`` seconds.
            ModelError, HubError: the adapter could not be used (raised as the loader raised it).
        """
        while self._completion is None and self._error is None:
            try:
                kind, value = self._request.events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no reply within {timeout} s") from None
            if kind == "done":
                self._completion = value
            elif kind == "error":
                self._error = value
        if self._error is not None:
            raise self._error
        return self._completion

    def cancel(self) -> None:
        """Stop generating; the reply ends with ``finish_reason="cancelled"``."""
        self._request.cancelled.set()
        self._scheduler.wake()


@dataclass(eq=False)
class _Request:
    id: int
    messages: list[dict[str, Any]]
    adapter: str | None
    sampling: Sampling
    tools: list[dict] | None
    tool_choice: str | dict | None = "auto"
    parallel_tool_calls: bool = True
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    staged: threading.Event = field(default_factory=threading.Event)
    plan: chatlib.ToolPlan | None = None
    hidden: frozenset[int] = frozenset()  # ids a tool reply's text leaves out (end of turn, padding)
    closed: Any = None  # a named tool_choice's stopping criterion: the arguments' object is complete
    tokenizer: Any = None
    prompt_ids: list[int] | None = None
    prompt_tokens: int | None = None
    eos: frozenset[int] = frozenset()
    generated: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish: str | None = None
    generator: Any = None
    slot: str | None = None  # the PEFT slot (or BASE_ROW) while it holds a row
    pinned: bool = False


class _Lane:
    """One batch stepped with one forward: the mixed lane, or one adapter PEFT cannot mix."""

    def __init__(self, own_slot: str | None):
        self.own_slot = own_slot  # None: rows name their adapter (adapter_names=)
        self.rows: list[_Request] = []
        self.cache = None
        self.mask = None  # (rows, cached length) 1 for real tokens, 0 for left padding
        self.pos = None  # (rows,) the next position of each row
        self.pending: list[int] = []  # each row's next input token


class Scheduler:
    """The batching worker over one pool; see the module docstring.

    Args:
        pool: the adapter pool whose model it drives.
        max_batch: the most requests decoded together (rows over every lane); the rest wait.
        loaders: threads preparing requests (adapter downloads, tokenizers, prompt encoding).

    Raises:
        ConfigError: the model's cache is not plain full attention (sliding windows, linear
            attention), which this scheduler's padding does not handle; use ``pool.chat``.
    """

    def __init__(self, pool: AdapterPool, *, max_batch: int = 16, loaders: int = 2):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.pool = pool
        self.max_batch = max_batch
        self._check_cache(pool.model.config)
        self._context = _context_length(pool.model.config)
        self._cache_arg = _cache_arg(pool.model)
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._ready: deque[_Request] = deque()
        self._lanes: dict[str | None, _Lane] = {}
        self._closed = False
        self._loader = ThreadPoolExecutor(max_workers=loaders, thread_name_prefix="tunekit-stage")
        self.steps = 0  # decoding steps taken (every lane counts once per step)
        self.peak = 0  # the most rows decoded together so far
        self._thread = threading.Thread(target=self._run, name="tunekit-batch", daemon=True)
        self._thread.start()

    # -- the callers' side ---------------------------------------------------------------------
    def submit(self, messages: list[dict[str, Any]], *, adapter: str | None = None,
               sampling: Sampling | None = None, tools: list[dict] | None = None,
               tool_choice: str | dict | None = "auto", parallel_tool_calls: bool = True) -> Handle:
        """Queue a request; it joins the running batch at the next step once it is prepared.

        Args:
            messages: the conversation (normalised by :func:`tunekit.chat.to_messages`).
            adapter: the adapter's name in the pool; None for the base alone.
            sampling: how to decode; default greedy, 256 tokens.
            tools: OpenAI function schemas: the prompt is rendered and the reply read through
                :func:`tunekit.chat.plan_tools` (as ``pool.chat(tools=…)`` does), a
                ``tool_choice`` other than ``"auto"`` prefilling the start of a call.
            tool_choice, parallel_tool_calls: as for :func:`tunekit.chat.plan_tools`.

        Returns:
            A :class:`Handle`.
        """
        if self._closed:
            raise ConfigError("the scheduler is closed")
        request = _Request(next(self._ids), messages, adapter, sampling or Sampling(), tools, tool_choice,
                           parallel_tool_calls)
        self._loader.submit(self._stage, request)
        return Handle(request, self)

    @property
    def active(self) -> int:
        """Requests holding a row in a batch now."""
        return sum(len(lane.rows) for lane in list(self._lanes.values()))

    @property
    def waiting(self) -> int:
        """Requests prepared and waiting for a row."""
        return len(self._ready)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the worker; requests still running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self._loader.shutdown(wait=False, cancel_futures=True)

    # -- preparing (loader threads) ------------------------------------------------------------
    def _stage(self, request: _Request) -> None:
        try:
            tokenizer = self.pool.tokenizer_for(request.adapter)  # downloads a cold adapter here
            plan = None
            if request.tools is not None:
                # The same steps as the one-at-a-time path: the template (or its family's fallback)
                # with tools, the prefill of a forced call, and the reply read in its format.
                plan = chatlib.plan_tools(tokenizer, request.tools, tool_choice=request.tool_choice,
                                          parallel_tool_calls=request.parallel_tool_calls)
                request.hidden = frozenset(chatlib.stop_ids(tokenizer))
            ids = chatlib.encode_prompt(tokenizer, request.messages, "cpu", plan=plan)["input_ids"][0].tolist()
            request.tokenizer, request.prompt_ids, request.prompt_tokens = tokenizer, ids, len(ids)
            request.plan = plan
            if plan is not None:
                request.closed = chatlib.arguments_closed(tokenizer, len(ids), plan)
            eos = tokenizer.eos_token_id
            request.eos = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
            if request.sampling.seed is not None:
                import torch

                request.generator = torch.Generator(device=self.pool.model.device).manual_seed(request.sampling.seed)
        except BaseException as e:  # the caller sees it from the handle
            request.staged.set()
            request.events.put(("error", e))
            return
        request.staged.set()
        with self._cond:
            if self._closed:
                request.events.put(("error", ConfigError("the scheduler was closed")))
                return
            self._ready.append(request)
            self._cond.notify_all()

    # -- the worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                while not self._closed and not self._ready and not self.active:
                    self._cond.wait()
                if self._closed:
                    break
                ready = list(self._ready)
                self._ready.clear()
            try:
                with self.pool.hold():
                    # Adapters are installed outside inference mode: PEFT later toggles requires_grad
                    # on their weights, which inference tensors refuse.
                    joining, deferred = self._admit(ready)
                    with torch.inference_mode():
                        for key, requests in joining.items():
                            self._prefill(self._lanes.setdefault(key, _Lane(key)), requests)
                        for lane in list(self._lanes.values()):
                            self._step(lane)
                    self._leave()
            except BaseException as e:  # never let the worker die: fail what was running, go on
                log.exception("batch step failed")
                deferred = []
                self._fail_all(e, ready)
            if deferred:
                with self._cond:
                    self._ready.extendleft(reversed(deferred))
        self._fail_all(ConfigError("the scheduler was closed"))

    def _admit(self, ready: list[_Request]) -> tuple[dict[str | None, list[_Request]], list[_Request]]:
        """Give waiting requests rows: those joining, by lane, and those that wait."""
        deferred, joining = [], {}
        rows = self.active
        for request in ready:
            if request.cancelled.is_set():
                self._finish(request, "cancelled")
                continue
            if rows >= self.max_batch:
                deferred.append(request)
                continue
            try:
                status, slot, mixable = self.pool.activate(request.adapter)
            except BaseException as e:
                request.events.put(("error", e))
                continue
            if status == "stage":  # evicted since it was prepared: prepare it again, off this thread
                self._loader.submit(self._stage, request)
                continue
            if status == "busy":  # no room among the hot adapters until a running request ends
                deferred.append(request)
                continue
            request.slot, request.pinned = slot, request.adapter is not None
            joining.setdefault(None if mixable else slot, []).append(request)
            rows += 1
        return joining, deferred

    def _forward(self, lane: _Lane, names: list[str], cache, **inputs):
        """Last-position logits of one forward; ``cache`` (a DynamicCache) grows in place."""
        model = self.pool.model
        inputs[self._cache_arg] = cache
        if not hasattr(model, "peft_config"):  # no adapter loaded: the bare base
            out = model(**inputs, use_cache=True, logits_to_keep=1)
        elif lane.own_slot is not None:
            _select(model, lane.own_slot)
            out = model(**inputs, use_cache=True, logits_to_keep=1)
        else:
            with _row_adapters(model, names):
                out = model(**inputs, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _prefill(self, lane: _Lane, requests: list[_Request]) -> None:
        import torch
        from transformers import DynamicCache

        device = self.pool.model.device
        width = max(len(r.prompt_ids) for r in requests)
        pad = _pad_id(requests[0].tokenizer)
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests], device=device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests],
                            device=device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache(config=self.pool.model.config)
        logits = self._forward(lane, [r.slot for r in requests], cache, input_ids=ids, attention_mask=mask,
                               position_ids=positions)
        first = [self._advance(r, _pick(logits[i], r)) for i, r in enumerate(requests)]
        keep = [i for i, r in enumerate(requests) if r.finish is None]
        for r in requests:
            if r.finish is not None:
                self._release(r)
        if not keep:
            return
        index = torch.tensor(keep, device=device)
        cache.batch_select_indices(index)
        self._merge(lane, [requests[i] for i in keep], cache, mask[index], mask[index].sum(-1),
                    [first[i] for i in keep])

    def _merge(self, lane: _Lane, rows: list[_Request], cache, mask, pos, pending: list[int]) -> None:
        import torch

        if not lane.rows:
            lane.rows, lane.cache, lane.mask, lane.pos, lane.pending = rows, cache, mask, pos, pending
            return
        width = max(lane.mask.shape[1], mask.shape[1])
        for old, new in zip(lane.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width), _left_pad(new.keys, width)])
            old.values = torch.cat([_left_pad(old.values, width), _left_pad(new.values, width)])
        lane.mask = torch.cat([_left_pad(lane.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        lane.pos = torch.cat([lane.pos, pos])
        lane.rows += rows
        lane.pending += pending

    def _step(self, lane: _Lane) -> None:
        """One decoding step for every row of a lane."""
        import torch

        live = [i for i, r in enumerate(lane.rows) if r.finish is None and not r.cancelled.is_set()]
        if len(live) < len(lane.rows):
            self._cut(lane, live)
        if not lane.rows:
            return
        device = lane.mask.device
        ids = torch.tensor(lane.pending, device=device).unsqueeze(1)
        lane.mask = torch.cat([lane.mask, torch.ones_like(lane.mask[:, :1])], dim=1)
        logits = self._forward(lane, [r.slot for r in lane.rows], lane.cache, input_ids=ids,
                               attention_mask=lane.mask, position_ids=lane.pos.unsqueeze(1))
        self.peak = max(self.peak, self.active)
        lane.pos = lane.pos + 1
        lane.pending = [self._advance(r, _pick(logits[i], r)) for i, r in enumerate(lane.rows)]
        self.steps += 1

    def _leave(self) -> None:
        """Cut finished and cancelled rows out of every lane, freeing their rows and adapters."""
        for key, lane in list(self._lanes.items()):
            live = [i for i, r in enumerate(lane.rows) if r.finish is None and not r.cancelled.is_set()]
            if len(live) < len(lane.rows):
                self._cut(lane, live)
            if not lane.rows:
                del self._lanes[key]

    def _cut(self, lane: _Lane, keep: list[int]) -> None:
        import torch

        for i, r in enumerate(lane.rows):
            if i not in keep:
                if r.finish is None:
                    self._finish(r, "cancelled")
                self._release(r)
        if not keep:
            lane.rows, lane.cache, lane.mask, lane.pos, lane.pending = [], None, None, None, []
            return
        index = torch.tensor(keep, device=lane.mask.device)
        lane.cache.batch_select_indices(index)
        lane.mask, lane.pos = lane.mask[index], lane.pos[index]
        lane.rows = [lane.rows[i] for i in keep]
        lane.pending = [lane.pending[i] for i in keep]
        # Columns that are padding in every row left: drop them (the batch's longest prompt went).
        start = int((lane.mask.sum(0) > 0).nonzero()[0])
        if start:
            for layer in lane.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            lane.mask = lane.mask[:, start:]

    # -- one row's bookkeeping -----------------------------------------------------------------
    def _advance(self, request: _Request, token: int) -> int:
        """Take one generated token: the text so far, stop strings, limits, the next piece."""
        s = request.sampling
        request.generated.append(token)
        tokenizer = request.tokenizer
        if request.plan is None:
            text = tokenizer.decode(request.generated, skip_special_tokens=True)
        else:  # special tokens kept: a format's call marker may be one
            kept = [i for i in request.generated if i not in request.hidden]
            text = tokenizer.decode(kept, skip_special_tokens=False)
        reason = "stop" if token in request.eos else None
        if reason is None and request.closed is not None and self._arguments_closed(request):
            reason = "stop"  # a forced call is whole once its arguments' object closes
        if s.stop:
            start = max(0, request.emitted - max(len(x) for x in s.stop))
            hits = [i for i in (text.find(x, start) for x in s.stop) if i >= 0]
            if hits:
                text, reason = text[:min(hits)], "stop"
        if reason is None and (len(request.generated) >= s.max_tokens
                               or (self._context and request.prompt_tokens + len(request.generated) >= self._context)):
            reason = "length"
        request.text = text
        if reason is None:
            safe = len(text) - (max(len(x) for x in s.stop) - 1 if s.stop else 0)
            while safe > request.emitted and text[safe - 1] == "\ufffd":  # half a multi-byte character
                safe -= 1
        else:
            safe = len(text)
        if safe > request.emitted:
            request.events.put(("piece", text[request.emitted:safe]))
            request.emitted = safe
        if reason is not None:
            self._finish(request, reason)
        return token

    @staticmethod
    def _arguments_closed(request: _Request) -> bool:
        import torch

        ids = torch.tensor([request.prompt_ids + request.generated])
        return bool(request.closed(ids, None)[0])

    def _finish(self, request: _Request, reason: str) -> None:
        if request.finish is not None:
            return
        request.finish = reason
        ids = list(request.generated)
        text, calls = request.text.strip(), []
        if request.plan is not None:
            reply = chatlib.reply_from_text(request.plan.prefix + request.text, request.plan)
            text, calls = reply.content, reply.tool_calls
        request.events.put(("done", Completion(text, ids, request.prompt_tokens or 0, len(ids), reason, calls)))

    def _release(self, request: _Request) -> None:
        if request.pinned:
            request.pinned = False
            self.pool.release(request.adapter)

    def _fail_all(self, error: BaseException, admitting: list[_Request] = ()) -> None:
        """End every running request (and those being admitted) with ``error``, freeing their adapters."""
        rows = [r for lane in self._lanes.values() for r in lane.rows]
        for r in [*rows, *(r for r in admitting if r not in rows)]:
            if r.finish is None:
                r.finish = "error"
                r.events.put(("error", error))
            self._release(r)
        self._lanes.clear()
        if self._closed:
            with self._cond:
                waiting, self._ready = list(self._ready), deque()
            for r in waiting:
                r.events.put(("error", error))

    @staticmethod
    def _check_cache(config) -> None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        kinds = {type(layer).__name__ for layer in DynamicCache(config=config).layers}
        if kinds - {DynamicLayer.__name__}:
            raise ConfigError(
                f"continuous batching needs a model with full attention in every layer; this one has "
                f"{', '.join(sorted(kinds))} cache layers. Serve it with pool.chat() (one request at a time).")


@contextlib.contextmanager
def _row_adapters(model, names: list[str]):
    """Run a forward with one adapter per row: each LoRA layer gets PEFT's ``adapter_names``
    (its mixed-batch forward; ``"__base__"`` rows skip every adapter).

    What ``PeftModel.forward(adapter_names=…)`` does, with two differences: the hooks are removed
    even when the forward raises (PEFT leaves them behind, breaking every later forward), and the
    active adapter is set to a mixable one in the batch (or all are disabled), so the
    ``modules_to_save``/trainable-token wrappers of other adapters pass through to the base module
    instead of looking up rows' adapters they do not hold.
    """
    from peft.tuners.lora import LoraLayer

    adapters = [n for n in names if n != BASE_ROW]
    handles = []
    try:
        if adapters:
            _select(model, adapters[0])
            for module in model.modules():
                if isinstance(module, LoraLayer):
                    handles.append(module.register_forward_pre_hook(
                        functools.partial(_inject_names, names=list(names)), with_kwargs=True))
            yield
        else:
            with model.disable_adapter():
                yield
    finally:
        for handle in handles:
            handle.remove()


def _select(model, slot: str) -> None:
    # set_adapter walks every module; most steps find the right one active already.
    if model.active_adapters != [slot]:
        model.set_adapter(slot)


def _inject_names(_module, args, kwargs, names):
    kwargs["adapter_names"] = names
    return args, kwargs


def _pick(logits, request: _Request) -> int:
    """The next token for one row: argmax when greedy, else a draw (temperature, top_p) from the
    request's own generator."""
    import torch

    s = request.sampling
    if not s.temperature:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > s.top_p  # the most likely token always stays
        sorted_probs = sorted_probs.masked_fill(outside, 0)
        choice = torch.multinomial(sorted_probs, 1, generator=request.generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=request.generator))


def _left_pad(tensor, width: int, dim: int = 2):
    import torch

    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        eos = tokenizer.eos_token_id
        pad = eos[0] if isinstance(eos, list) else eos
    return pad if pad is not None else 0


def _cache_arg(model) -> str:
    """The forward's name for the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _context_length(config) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None
