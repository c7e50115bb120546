"""Keys never reach a log line: every log record of the process is masked as it is made.

Hooked where every logger makes its records (``Logger.makeRecord``) rather than on
handlers, so it covers every logger, every handler (also those added after ``install()``, e.g. by a
later ``logging.basicConfig``), and ``warnings`` routed to logging, and it costs
nothing for records below the enabled level (those are never made). Each record is
masked once, whatever number of handlers then format it: the message with its args
(``%s`` of a dict or an SDK's request options included), the formatted exception
and traceback, the stack info, and string ``extra`` fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import wrapt

# The attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_formatter = logging.Formatter()

Redact = Callable[[str], str]

_original: Any = None  # Logger.makeRecord as it was before install()


def install(redact: Redact) -> None:
    """Mask every record made from now on with ``redact``; replaces an earlier install.

    ``Logger.makeRecord`` is wrapped (in place, with wrapt) rather than the record
    factory, because ``extra=`` fields are set on the record after the factory runs."""
    global _original
    uninstall()
    _original = logging.Logger.__dict__["makeRecord"]

    def make_record(wrapped: Callable[..., logging.LogRecord], instance: Any, args: Any, kwargs: Any) -> Any:
        record = wrapped(*args, **kwargs)
        scrub(record, redact)
        return record

    wrapt.wrap_function_wrapper(logging.Logger, "makeRecord", make_record)


def uninstall() -> None:
    global _original
    if _original is not None:
        logging.Logger.makeRecord = _original  # type: ignore[method-assign]
        _original = None


def scrub(record: logging.LogRecord, redact: Redact) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: logging reports it later; mask what is there
        message = f"{record.msg!s} {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = _formatter.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    for name, value in record.__dict__.items():
        if name not in _STANDARD and isinstance(value, str):
            record.__dict__[name] = redact(value)
