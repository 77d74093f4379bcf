"""The wire's JSON, for both ends: compact and strict, straight through the ``_json`` C
accelerator (see ``_codec``). The core imports this module; the bootstrap loads it by path (as it
loads ``_wire``). Standard library only, and nothing imported at run time but ``sys`` and ``_json``.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class _ScanContext:
    """What ``_json.make_scanner`` reads off a decoder (as ``json.JSONDecoder()`` sets it)."""

    strict = True
    object_pairs_hook = None
    memo: dict[str, str]
    parse_int: Callable[[str], int]
    object_hook: Callable[[dict[str, Any]], object] | None

    def __init__(self, *, short: bool = False, yielding: bool = False) -> None:
        """``short``: for a text too short to hold an integer past a double (the C parser's
        own ``int``); ``yielding``: a Python call per object, where another thread may take
        the GIL (a long text decoded by a worker must not hold the event loop up throughout)."""
        self.memo = {}
        self.parse_int = int if short else _finite_int
        self.object_hook = _same if yielding else None

    @staticmethod
    def parse_constant(name: str) -> float:
        return _refuse_constant(name)

    @staticmethod
    def parse_float(text: str) -> float:
        return _finite_float(text)


def _same(obj: dict[str, Any]) -> object:
    return obj


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400 would become Infinity
        raise ValueError(f"number {text[:40]} is out of range (not valid JSON)")
    return value


#: the largest integer a double holds (an integer past it would overflow the other side's double)
_DOUBLE_MAX = int(sys.float_info.max)


#: a text shorter than this (or with fewer digits) holds no integer past a double
_SHORT = 309
_DIGITS = b"0123456789"


def _finite_int(text: str) -> int:
    if len(text) < _SHORT:  # below 10**308: within a double
        return int(text)
    if len(text) > 310 or not -_DOUBLE_MAX <= (value := int(text)) <= _DOUBLE_MAX:
        raise ValueError(f"number {text[:40]}... is out of range (not valid JSON)")
    return value


def _refuse_surrogates(text: str, obj: object) -> object:
    """``obj`` if no string in it holds a lone surrogate (only a ``\\udXXX`` escape in ``text``
    makes one): such a string cannot be encoded as UTF-8, so nothing could print or send it on."""
    if "\\u" not in text or ("\\ud" not in text and "\\uD" not in text):  # one scan, mostly
        return obj
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("lone surrogate escape in a string (not UTF-8)") from None
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return obj


def _codec() -> tuple[
    Callable[[object], str], Callable[[bytes | str], Any], Callable[[bytes | str], Any]
]:
    """Compact, strict JSON straight through the ``_json`` C accelerator: twice as fast per
    message as ``json.dumps``/``json.loads``, and without importing ``json`` (and ``re``) at
    start-up.

    Both ways refuse ``NaN``/``Infinity`` (not JSON: the other side, or ``call``'s output,
    could not parse them; numbers such as ``1e400`` included) and strings that are not UTF-8
    (lone surrogates). Decoding raises ``ValueError`` and nothing else for any bad input
    (invalid UTF-8, nesting too deep for the parser included), so a reader needs one handler.
    """
    try:
        import _json
    except ImportError:  # pragma: no cover - interpreters without the accelerator
        import json

        encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

        def fallback(data: bytes | str) -> Any:
            try:
                text = data.decode("utf-8") if isinstance(data, bytes) else data
                obj = json.loads(
                    text,
                    parse_constant=_refuse_constant,
                    parse_float=_finite_float,
                    parse_int=_finite_int,
                )
                return _refuse_surrogates(text, obj)
            except RecursionError:
                raise ValueError("JSON nested too deeply") from None

        return encoder.encode, fallback, fallback

    def default(obj: object) -> object:
        raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")

    iterencode = _json.make_encoder(
        None, default, _json.encode_basestring, None, ":", ",", False, False, False
    )
    short = _json.make_scanner(_ScanContext(short=True))  # type: ignore[arg-type]
    checked = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    yielding: list[Callable[[str, int], Any]] = []  # made at the first long line

    def encode(obj: object) -> str:
        return "".join(iterencode(obj, 0))

    def decode(data: bytes | str, scan: Callable[[str, int], Any] | None = None) -> Any:
        try:
            if isinstance(data, str):
                text = data
                if scan is None:
                    scan = short if len(text) < _SHORT else checked
            else:
                if scan is None:
                    # no integer past a double where fewer than _SHORT digits are: one C pass
                    # instead of a Python call per integer
                    digits = len(data) - len(data.translate(None, _DIGITS))
                    scan = short if digits < _SHORT else checked
                text = data.decode("utf-8")
            try:
                obj, end = scan(text, 0)
            except (StopIteration, SystemError):
                # SystemError: until json.decoder is imported, the C scanner fails to raise
                # its JSONDecodeError (e.g. for '{x'); json.loads below names the error
                obj, end = None, -1
            rest = len(text) - end
            if end < 0 or (rest and (rest > 1 or text[end] != "\n") and text[end:].strip()):
                import json

                # raises the precise error (or copes with leading space)
                obj = json.loads(
                    text,
                    parse_constant=_refuse_constant,
                    parse_float=_finite_float,
                    parse_int=_finite_int,
                )
            if "\\u" in text:  # only a \\udXXX escape makes a lone surrogate
                _refuse_surrogates(text, obj)
            return obj
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None

    def decode_yielding(data: bytes | str) -> Any:
        if not yielding:
            yielding.append(_json.make_scanner(_ScanContext(yielding=True)))  # type: ignore[arg-type]
        return decode(data, yielding[0])

    return encode, decode, decode_yielding


#: ``loads_yielding``: ``loads`` for a long line decoded off an event loop's thread
dumps, loads, loads_yielding = _codec()
