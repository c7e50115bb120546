"""Keys never reach a log line: every log record of the process is masked as it is made.

Hooked where every logger makes its records (``Logger.makeRecord``) rather than on
handlers, so it covers every logger, every handler (also those added after ``install()``, e.g. by a
later ``logging.basicConfig``), handlers that never call ``format()`` (loguru's
``InterceptHandler`` reads ``getMessage()``), and ``warnings`` routed to logging, and it costs
nothing for records below the enabled level (those are never made). Each record is
masked once, whatever number of handlers then format it: the message with its args
(``%s`` of a dict or an SDK's request options included), the formatted exception
and traceback, the stack info, and string ``extra`` fields.

A masked record keeps its shape, because formatters and filters read its parts: uvicorn's
access formatter unpacks ``record.args``, the openai SDK's ``SensitiveHeadersFilter`` (a
logger filter, so it runs after this) replaces header values in the ``record.args`` dict,
caplog tests compare ``record.msg``. So ``msg`` stays the format string and ``args`` a tuple
or dict of the same length; only a value that held a secret changes, in its place:
a string is masked, a dict, list or tuple is copied with its strings masked (the caller's
own object is never changed), and any other object becomes a masked string (``MaskedText``,
whose ``repr`` is masked too, so ``%r`` still shows a repr).

The safety net is the whole message: what the parts format to must equal the whole formatted
message masked at once (which also sees a secret split between the format string and an arg,
e.g. ``"api-key: %s"``). When it does not, the record keeps its args (masked) but its ``msg``
becomes the masked message, escaped, followed by one ``%.0s`` per arg (an arg printed with
precision 0 prints nothing), so it still formats, with no error, to exactly the masked text.
"""

from __future__ import annotations

import copy
import functools
import logging
import types
from collections.abc import Callable, Mapping
from typing import Any

from .core.redact import mask_credential

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_formatter = logging.Formatter()
# Nested containers in an arg are copied with masked strings down to this depth; deeper,
# the whole container becomes masked text (and a self-containing list cannot loop).
_MAX_DEPTH = 8

Redact = Callable[[str], str]

_original: Any = None  # Logger.makeRecord as it was before install()


def install(redact: Redact) -> None:
    """Mask every record made from now on with ``redact``; replaces an earlier install.

    ``Logger.makeRecord`` is replaced in place by a plain function that calls the one it
    replaces, rather than the record factory, because ``extra=`` fields are set on the record
    after the factory runs. Not a wrapt wrapper: this runs for every record of the process,
    and binding a wrapt wrapper to the logger and calling through it cost about 4,000 CPU
    instructions a record (a twelfth of what masking a typical record added)."""
    global _original
    uninstall()
    _original = original = logging.Logger.__dict__["makeRecord"]
    make: Callable[..., logging.LogRecord]
    if type(original) is types.FunctionType:  # not isinstance: a wrapt proxy passes that test
        make = original
    else:  # another tool's wrapper (a descriptor): bound as an attribute lookup would bind it

        def make(logger: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
            return original.__get__(logger, type(logger))(*args, **kwargs)  # type: ignore[no-any-return]

    @functools.wraps(original)
    def make_record(logger: logging.Logger, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(logger, *args, **kwargs)
        scrub(record, redact)
        return record

    logging.Logger.makeRecord = make_record  # type: ignore[method-assign,assignment]


def installed() -> bool:
    return _original is not None


def uninstall() -> None:
    global _original
    if _original is not None:
        logging.Logger.makeRecord = _original  # type: ignore[method-assign]
        _original = None


class MaskedText(str):
    """An arg that held a secret, as masked text: ``%s`` shows its masked ``str()``, ``%r``
    its masked ``repr()``, so the line reads as it would have, less the secret."""

    __slots__ = ("_repr",)
    _repr: str

    def __new__(cls, text: str, representation: str) -> MaskedText:
        made = super().__new__(cls, text)
        made._repr = representation
        return made

    def __repr__(self) -> str:
        return self._repr


def scrub(record: logging.LogRecord, redact: Redact) -> None:
    _scrub_message(record, redact)
    if record.exc_info and not record.exc_text:
        record.exc_text = _formatter.formatException(record.exc_info)
    if record.exc_text:
        masked = redact(record.exc_text)
        if masked != record.exc_text:
            record.exc_text = masked
            # Some handlers format exc_info themselves, not exc_text (structlog's
            # format_exc_info, loguru's InterceptHandler, error trackers): hand them a masked
            # stand-in of the exception, with the same traceback.
            if record.exc_info and record.exc_info[1] is not None:
                stand_in = _masked_exception(record.exc_info[1], redact, 0)
                record.exc_info = (type(stand_in), stand_in, record.exc_info[2])
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    fields = record.__dict__
    if _STANDARD.issuperset(fields):
        return  # no `extra=` field: one pass over the names, with no set made (the common case)
    for name in fields.keys() - _STANDARD:  # the `extra=` fields, found by one set difference
        value = fields[name]
        if isinstance(value, str):
            fields[name] = redact(value)


def _scrub_message(record: logging.LogRecord, redact: Redact) -> None:
    msg, args = record.msg, record.args
    try:
        message = record.getMessage()
    except Exception:
        # A format string that does not fit its args: logging reports it when a handler
        # formats the record, printing msg and args as they are, so mask both in place.
        whole = redact(f"{msg!s} {args!r}")
        record.msg = redact(msg) if isinstance(msg, str) else _masked_part(msg, whole, redact, 0)
        record.args = _masked_args(args, whole, redact)
        return
    masked = redact(message)
    if masked == message:
        return  # no secret: the record stays exactly as it was made (the common case)
    new_args = _masked_args(args, masked, redact)
    record.msg = msg if isinstance(msg, str) else _masked_part(msg, masked, redact, 0)
    record.args = new_args
    if _formats_to(record, masked):
        return
    if isinstance(msg, str):  # the format string itself held a secret (an f-string line)
        record.msg = redact(msg)
        if _formats_to(record, masked):
            return
    # The parts do not add up to the masked whole: print the whole, keep the args' shape.
    text = masked.replace("%", "%%") if new_args else masked
    if isinstance(new_args, tuple):
        text += "%.0s" * len(new_args)
    record.msg, record.args = text, new_args


def _masked_exception(exc: BaseException, redact: Redact, depth: int) -> BaseException:
    """A copy of ``exc`` whose text is masked: the same class, made without its ``__init__``
    (whose signature is the class's own), with masked ``args`` and attributes, and the same
    traceback and masked causes. When the class will not be copied so (an exception group),
    or its text still shows a secret, a stand-in of the same name and module holds the
    masked text. The app's own exception object is never changed."""
    kind = type(exc)
    try:
        copied = kind.__new__(kind)
        copied.args = tuple(_masked_value(arg, redact) for arg in exc.args)
        for name, value in vars(exc).items():
            copied.__dict__[name] = _masked_value(value, redact)
        text = str(copied)
        if redact(text) != text and redact(str(exc)) != text:
            raise ValueError("its text still shows a secret")
    except Exception:
        stand_in = type(kind.__name__, (Exception,), {"__module__": kind.__module__, "__qualname__": kind.__qualname__})
        copied = stand_in(redact(_text_of(exc)))
    copied.__traceback__ = exc.__traceback__
    copied.__suppress_context__ = exc.__suppress_context__
    if depth < _MAX_DEPTH:
        for link in ("__cause__", "__context__"):
            linked = getattr(exc, link)
            setattr(copied, link, None if linked is None else _masked_exception(linked, redact, depth + 1))
    return copied


def _masked_value(value: Any, redact: Redact) -> Any:
    """An exception's arg or attribute: a string masked, anything whose repr shows a secret
    as masked text, anything else as it is."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float):
        return value
    text, representation = _text_of(value), _repr_of(value)
    masked_text, masked_representation = redact(text), redact(representation)
    if masked_text == text and masked_representation == representation:
        return value
    return MaskedText(masked_text, masked_representation)


def _text_of(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _repr_of(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _formats_to(record: logging.LogRecord, masked: str) -> bool:
    try:
        return record.getMessage() == masked
    except Exception:  # e.g. masking the format string took a placeholder with it
        return False


def _masked_args(args: Any, masked: str, redact: Redact) -> Any:
    if isinstance(args, dict):
        # A copy of the same class (gunicorn's atoms answer "-" for a missing name), its
        # values set directly: the class's own __init__ may rework what it is given.
        try:
            copied = copy.copy(args)
        except Exception:  # a class that cannot be copied: a plain dict formats the same
            copied = dict(args)
        for name, value in args.items():
            dict.__setitem__(copied, name, _masked_part(value, masked, redact, 0))
        return copied
    if isinstance(args, Mapping):
        return {name: _masked_part(value, masked, redact, 0) for name, value in args.items()}
    if isinstance(args, tuple):
        return tuple(_masked_part(value, masked, redact, 0) for value in args)
    return args


def _masked_part(value: Any, masked: str, redact: Redact, depth: int) -> Any:
    """``value`` as it may stay in a record whose whole message masks to ``masked``: itself
    when all of its text shows in the masked message (nothing in it was hidden), else
    masked, keeping its kind where formatters may rely on it."""
    if value is None or isinstance(value, int | float):
        return value  # numbers are not keys; %d and %f need them as numbers
    if isinstance(value, str):
        return value if value in masked else _masked_str(value, redact)
    kind = type(value)
    if kind in (dict, list, tuple) and depth < _MAX_DEPTH:
        if repr(value) in masked:
            return value
        if kind is dict:
            return {name: _masked_part(item, masked, redact, depth + 1) for name, item in value.items()}
        return kind(_masked_part(item, masked, redact, depth + 1) for item in value)
    try:
        text, representation = str(value), repr(value)
    except Exception:  # an object that cannot show itself: nothing of it is printed anyway
        return value
    if text in masked and representation in masked:
        return value
    return MaskedText(_masked_str(text, redact), _masked_str(representation, redact))


def _masked_str(text: str, redact: Redact) -> str:
    """A string that does not show in the masked message: mask what in it looks secret;
    when nothing does alone, its secret was told by its context (``"api-key: %s"``), so all
    of it is the secret."""
    redacted = redact(text)
    return redacted if redacted != text else mask_credential(text)
