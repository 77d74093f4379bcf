"""The plugin's calls: ``Plugin``, a leader/follower pool over the ``LineChannel`` (which calls
run inline on the reader, which on a thread of their own, the relief watch, cancellation,
control messages), and ``CallContext``, what a method that accepts ``context`` receives.

Standard library only: the bootstrap loads this file by path (see ``_channel``); the core
imports it as a module.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import NoReturn

    from . import _wire as wire
    from ._channel import LineChannel, error, exception_error
    from ._codec import loads

    def _sibling(name: str) -> ModuleType: ...
elif __package__:  # the core imports this module
    from . import _wire as wire
    from ._channel import error, exception_error
    from ._codec import loads
else:  # loaded by path: the bootstrap hands it its loader (``_sibling``) before it runs
    wire = _sibling("_wire")
    loads = _sibling("_codec").loads
    error = _sibling("_channel").error
    exception_error = _sibling("_channel").exception_error

PARSE_ERROR: int = wire.PARSE_ERROR
INVALID_REQUEST: int = wire.INVALID_REQUEST
METHOD_NOT_FOUND: int = wire.METHOD_NOT_FOUND
INVALID_PARAMS: int = wire.INVALID_PARAMS
CONTROL_PREFIX: str = wire.CONTROL_PREFIX
CONFIGURE: str = wire.CONFIGURE
JSONRPC: str = wire.JSONRPC_VERSION

INLINE_BELOW = 0.001  # seconds: calls quicker than this (on average) run on the reader
#: seconds: a quick call running longer than this on the reader is left to it as a worker's,
#: and another thread takes the reading over (so one call that turns slow stalls no other)
RELIEVE_AFTER = 0.005
#: ticks of RELIEVE_AFTER with no quick call running before the watch sleeps until the next one
WATCH_IDLE_TICKS = 200
EARLY_CANCELS = 1024  # $/cancel ids kept for calls not started yet
_clock = time.perf_counter


class CallContext:
    """What a plugin method that accepts ``context`` receives: caller meta and cancellation."""

    __slots__ = ("cancelled", "id", "meta")

    def __init__(self, call_id: object, meta: dict[str, object]) -> None:
        self.id = call_id
        self.meta = meta
        self.cancelled = threading.Event()

    @property
    def deadline(self) -> float | None:
        """Seconds since the epoch by which the caller wants an answer, if it said."""
        value = self.meta.get(wire.META_DEADLINE)
        return float(value) if isinstance(value, (int, float)) else None


def _accepts_context(func: object) -> bool:
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    if code is None:
        return False
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return "context" in names


class Plugin:
    """A leader/follower pool: the thread that reads a call runs it, after handing the reading
    on to an idle thread. At most ``max_concurrency`` calls run at once; one more thread keeps
    reading, so ``$/cancel`` and ``$/ping`` are answered while every worker is busy.

    The reader goes through every request buffered, runs the quick ones (and control messages)
    right there, and writes all their replies with one write before it blocks again. A quick call
    that turns slow (a backend that stalls) would hold every other call up: a watch thread
    relieves such a reader after ``RELIEVE_AFTER``, handing the reading on to another thread
    while the slow call finishes where it runs.
    """

    def __init__(
        self,
        obj: object,
        wire: LineChannel,
        max_concurrency: int,
        *,
        limits: dict[str, object] | None = None,
        end: Callable[[bool], None] | None = None,
    ) -> None:
        """``limits``: those in force, named in the error of a call that hit one; ``end``: how
        the process ends (``asked``: the core asked), taking whatever it started with it."""
        self.obj = obj
        self.limits = limits or {}
        self.ending = end
        self.wire = wire
        self.max_concurrency = max(1, max_concurrency)
        if getattr(obj, "reva_single_threaded", False):
            self.max_concurrency = 1
        self.contexts: dict[object, CallContext] = {}
        # ids whose $/cancel came before their call ran (read, handed on or backlogged); the
        # cap drops cancels that came after their call ended, which no call will take
        self.early_cancels: dict[object, bool] = {}
        self.methods: dict[str, tuple[object, bool]] = {}
        self.lock = threading.Lock()
        self.turn = threading.Condition(self.lock)
        self.idle = threading.Condition(self.lock)
        self.draining = False
        self.backlog: list[dict[str, object]] = []
        self.threads = 1
        self.waiting = 0
        self.executing = 0
        self.leading = False
        self.cost: dict[object, float] = {}
        self.cancellable: set[object] = set()
        self.out: list[bytes] = []  # replies of the batch being read, unsent
        self.epoch = 0  # counts hand-overs of the reading: a relieved reader sees it changed
        self.inline_since = 0.0  # when the quick call running on the reader began (0: none)
        self.watch: threading.Condition | None = None  # the relief watch, once started
        self.watch_idle = False  # the watch sleeps until the next quick call

    def method(self, name: str) -> tuple[object, bool] | None:
        cached = self.methods.get(name)
        if cached is None:
            if name.startswith(("_", CONTROL_PREFIX)):
                return None
            func = getattr(self.obj, name, None)
            if not callable(func):
                return None
            cached = self.methods[name] = (func, _accepts_context(func))
        return cached

    def follow(self) -> None:
        """A pool thread: run backlogged calls, or lead when nobody reads, or wait."""
        while True:
            with self.lock:
                while True:
                    if self.backlog and self.executing < self.max_concurrency:
                        request: dict[str, object] | None = self.backlog.pop(0)
                        self.executing += 1
                        break
                    if not self.leading:
                        self.leading = True
                        request = None
                        break
                    self.waiting += 1
                    self.turn.wait()
                    self.waiting -= 1
            if request is None:
                request = self.lead()
                if request is None:  # relieved of the reading: the call's reply is written
                    continue
            self.wire.write(self.run(request))

    def lead(self) -> dict[str, object] | None:
        """Read until a call must run on a thread of its own; hand the reading on and return it.
        None: a quick call turned slow here, the watch handed the reading on meanwhile, and the
        call's reply is written.

        A call that is known to be quick and cannot see cancellation (no ``context``) runs right
        here without handing the reading on: waking another thread costs more than such a call,
        and under the GIL quick calls gain nothing from running beside each other.
        """
        while True:
            request = self.next_call()
            with self.lock:
                if self.executing >= self.max_concurrency:
                    self.backlog.append(request)
                    continue
                if self.backlog:  # calls read before this one run first
                    self.backlog.append(request)
                    request = self.backlog.pop(0)
                self.executing += 1
                method = request["method"]
                inline = (
                    method != CONFIGURE  # run on the reader below, never relieved
                    and self.cost.get(method, 1.0) < INLINE_BELOW
                    and method not in self.cancellable
                )
                if inline:
                    epoch = self.epoch
                    self.inline_since = _clock()
                    if self.watch is None or self.watch_idle:
                        self._wake_watch()
            if method == CONFIGURE:
                # sent once, before any call: nothing waits behind it, and no thread (in an
                # idle plugin's memory for good) need start for it
                self.out.append(self.run(request))
                continue
            if inline:
                reply = self.run(request, epoch)
                if self.epoch != epoch:
                    self.wire.write(reply)
                    return None
                self.out.append(reply)
                continue
            self.flush()
            with self.lock:
                handed_on = self._hand_reading_on()
                if not handed_on and self.threads > self.executing:
                    # every thread is started and none waits, but one runs no call: it is on
                    # its way back and takes this from the backlog. Run here, a call waiting
                    # for its $/cancel would wait for good, as nobody would read it.
                    self.executing -= 1
                    self.backlog.insert(0, request)  # the oldest read: it runs first
                    continue
            if not handed_on:  # no thread to spare (a memory limit): run it here
                self.out.append(self.run(request))
                continue
            return request

    def _hand_reading_on(self) -> bool:
        """Let another thread read (call with the lock held): a waiting one, else a new one.
        False when there is none and none can be started (the caller reads on)."""
        if self.waiting:
            self.turn.notify()
        elif self.threads <= self.max_concurrency and _start_thread(self.follow):
            self.threads += 1
        else:
            return False
        self.leading = False
        self.epoch += 1
        return True

    def _wake_watch(self) -> None:
        """Start the relief watch, or wake it from its idle sleep (call with the lock held)."""
        self.watch_idle = False
        if self.watch is None:
            self.watch = threading.Condition(self.lock)
            if not _start_thread(self._watch):
                self.watch_idle = True  # no relief then; tried again at the next quick call
                self.watch = None
        else:
            self.watch.notify()

    def _watch(self) -> None:
        """Relieve a reader whose quick call has run for ``RELIEVE_AFTER``: the call finishes on
        that thread as a worker's, another thread reads. Ticks only while quick calls run; after
        ``WATCH_IDLE_TICKS`` quiet ticks it sleeps until the reader starts the next one."""
        watch = self.watch
        assert watch is not None
        quiet = 0
        with self.lock:
            while True:
                since = self.inline_since
                if not since:
                    quiet += 1
                elif _clock() - since >= RELIEVE_AFTER and self.leading:
                    quiet = 0
                    self.inline_since = 0.0
                    self._hand_reading_on()
                else:
                    quiet = 0
                if quiet >= WATCH_IDLE_TICKS:
                    self.watch_idle = True
                    quiet = 0
                    watch.wait()
                else:
                    watch.wait(RELIEVE_AFTER)

    def run(self, request: dict[str, object], epoch: int = -1) -> bytes:
        """Execute one call (counted in ``executing`` by the caller); its reply line.

        ``epoch``: the call runs on the reader, which held the reading at that epoch. Once this
        returns, the watch can no longer relieve it (``inline_since`` is cleared under the lock
        the watch decides under), so ``self.epoch != epoch`` tells the caller for good whether
        it was relieved meanwhile: only a reader moves the epoch, and it is no longer one."""
        method = request["method"]
        began = _clock()
        try:
            return self.wire.encode(self.execute(request), method)
        finally:
            took = _clock() - began
            self.cost[method] = (self.cost.get(method, took) + took) / 2
            with self.lock:
                self.executing -= 1
                if self.backlog and self.waiting:
                    # a thread that found every slot taken waits with calls backlogged: wake
                    # it now, as the reader may block for good (nothing more is coming)
                    self.turn.notify()
                if epoch == self.epoch:  # a relieved reader leaves the new one's mark alone
                    self.inline_since = 0.0
                if self.draining and not self.executing:
                    self.idle.notify_all()

    def flush(self) -> None:
        """Write the replies of the batch read so far, with one write."""
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.wire.write(data)

    def next_call(self) -> dict[str, object]:
        """The next call request; control messages and bad lines are answered on the way (their
        replies join the batch, written before the reader blocks)."""
        wire = self.wire
        out = self.out
        while True:
            line = wire.take()
            if line == b"":
                self.flush()
                if not wire.fill():
                    self.end(asked=False)
                continue
            if line is None:
                out.append(
                    wire.encode(
                        error(None, INVALID_REQUEST, f"message longer than {wire.max_line} bytes")
                    )
                )
                continue
            try:
                request = loads(line)
            except ValueError as exc:
                out.append(wire.encode(error(None, PARSE_ERROR, f"invalid JSON: {exc}")))
                continue
            if not isinstance(request, dict) or not isinstance(request.get("method"), str):
                call_id = request.get("id") if isinstance(request, dict) else None
                out.append(wire.encode(error(call_id, INVALID_REQUEST, "not a JSON-RPC request")))
                continue
            if request["method"].startswith(CONTROL_PREFIX):
                self.control(request)
            elif "id" in request:
                return request

    def control(self, request: dict[str, object]) -> None:
        """Handle a ``$/`` control message."""
        method = request["method"]
        call_id = request.get("id")
        params = request.get("params")
        if method == wire.CANCEL:
            target = params.get("id") if isinstance(params, dict) else None
            context = self.contexts.get(target)
            if context is None and target is not None:
                # not running yet (handed on, backlogged): kept for when it starts, and looked
                # up again in case it started meanwhile
                with self.lock:
                    self.early_cancels[target] = True
                    if len(self.early_cancels) > EARLY_CANCELS:
                        del self.early_cancels[next(iter(self.early_cancels))]
                context = self.contexts.get(target)
            if context is not None:
                context.cancelled.set()
        elif method == wire.PING:
            if call_id is not None:
                pong: wire.PingResult = {"pid": os.getpid()}
                reply = {"jsonrpc": JSONRPC, "id": call_id, "result": pong}
                self.out.append(self.wire.encode(reply))
        elif method == wire.SHUTDOWN:
            self.flush()
            with self.lock:
                self.draining = True
                self.idle.wait_for(lambda: not self.executing, 1.5)
            if call_id is not None:
                self.wire.send({"jsonrpc": JSONRPC, "id": call_id, "result": None})
            self.end(asked=True)
        elif call_id is not None:
            self.out.append(
                self.wire.encode(error(call_id, METHOD_NOT_FOUND, f"method not found: {method}"))
            )

    def end(self, *, asked: bool) -> NoReturn:
        """Exit the process: cleanly when the core asked, else (the core is gone) with
        whatever it started (see ``end`` in the constructor)."""
        sys.stderr.flush()
        if self.ending is not None:
            self.ending(asked)
        os._exit(0)

    def execute(self, request: dict[str, object]) -> dict[str, object]:
        call_id = request.get("id")
        name = request.get("method")
        params = request.get("params", {})
        if not isinstance(params, dict):
            return error(call_id, INVALID_PARAMS, "params must be an object of keyword arguments")
        if name == wire.CONFIGURE:
            found = self.method(wire.CONFIGURE)
            if found is None:
                return {"jsonrpc": JSONRPC, "id": call_id, "result": None}
            configure: wire.ConfigureParams = {"config": params.get("config", {})}
            params = dict(configure)
        else:
            name = str(name)  # a str already (see next_call)
            found = self.methods.get(name) or self.method(name)
        if found is None:
            return error(call_id, METHOD_NOT_FOUND, f"method not found: {name}")
        func, wants_context = found
        context = None
        if wants_context:
            self.cancellable.add(name)  # never inline: it must be able to see $/cancel
        if wants_context:
            meta = request.get(wire.META)
            context = CallContext(call_id, meta if isinstance(meta, dict) else {})
            params = dict(params, context=context)
            self.contexts[call_id] = context
            if self.early_cancels:
                with self.lock:
                    if self.early_cancels.pop(call_id, False):
                        context.cancelled.set()
        try:
            result = func(**params)  # type: ignore[operator]
        except TypeError as exc:
            if _bad_arguments(func, params):
                return error(call_id, INVALID_PARAMS, f"invalid params for {name}: {exc}")
            return exception_error(call_id, exc, self.limits)
        except BaseException as exc:
            return exception_error(call_id, exc, self.limits)
        finally:
            if context is not None:
                self.contexts.pop(call_id, None)
        return {"jsonrpc": JSONRPC, "id": call_id, "result": result}


def _start_thread(target: Callable[[], None]) -> bool:
    """Start a daemon thread; False when the system has none to give (``memory_mb``, a thread
    limit): the pool then makes do with the threads it has.

    Not ``threading.Thread.start``: it waits, under the pool's lock, for the thread to say it
    runs, and one that dies of a ``MemoryError`` first (near ``memory_mb``) never says so: the
    plugin hung for good. A thread lost that way costs nothing: the reading it was handed is
    taken back by the next thread that finishes its call."""
    try:
        _thread.start_new_thread(target, ())
    except (RuntimeError, MemoryError):
        return False
    return True


def _bad_arguments(func: object, params: dict[str, object]) -> bool:
    import inspect

    try:
        inspect.signature(func).bind(**params)  # type: ignore[arg-type]
    except TypeError:
        return True
    except Exception:  # a callable's own signature may raise anything
        return False
    return False
