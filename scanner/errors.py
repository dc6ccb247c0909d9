"""Errors raised inside mxscan, and the one table that turns errors into reasons.

The tree::

    Exception
     +-- ConfigError              bad configuration or command line (exit status 2)
     +-- OutputError              the results cannot be written (exit status 1)
     +-- scanner.smtp.reply.ReplyError      bytes that are not an SMTP reply
     |    +-- NotSmtp                         no three-digit code (HTTP, SSH, garbage)
     |    +-- MalformedReply                  codes that disagree or are out of range
     |    +-- ReplyTooLong                    a line or reply over its cap
     +-- ProbeError               a probe step that did not get a reply
          +-- PhaseTimeout        a phase ran past its own deadline (.phase)
          +-- HostDeadline        the whole session ran past the host's deadline
          +-- ConnectionClosed    the server closed the connection (EOF)

Operating-system errors (``ConnectionRefusedError``, ``ConnectionResetError``,
``OSError`` with ENETUNREACH, ...) and aiosmtplib's errors are not wrapped: the
probe lets them rise and ``failure_from_exception`` maps them, at the boundary, to a
``Failure`` with a reason from the closed set. Anything the table does not know
becomes ``scanner_error``, so a bug on one address is recorded and the sweep goes on.
"""

from __future__ import annotations

import errno
import os
import ssl

from aiosmtplib.errors import SMTPServerDisconnected

from .results import Failure, Phase, Reason
from .smtp.reply import MalformedReply, NotSmtp, ReplyError, ReplyTooLong


class ConfigError(Exception):
    """Invalid configuration, domain file or command-line value. The message names the value and the fix."""


class OutputError(Exception):
    """The results cannot be written (a full disk, a lost mount); the sweep stops at once."""


class ProbeError(Exception):
    """A probe step ended without a usable reply."""


class PhaseTimeout(ProbeError):
    def __init__(self, phase: Phase, seconds: float) -> None:
        if phase is Phase.CONNECT:
            what = "connection"
        elif phase is Phase.BANNER:
            what = "complete banner"
        else:
            what = f"complete reply to {phase.value.upper()}"
        super().__init__(f"no {what} within {seconds:g} s")
        self.phase = phase
        self.seconds = seconds


class HostDeadline(ProbeError):
    def __init__(self, seconds: float) -> None:
        super().__init__(f"session with the host exceeded its {seconds:g} s deadline")
        self.seconds = seconds


class ConnectionClosed(ProbeError):
    """The server closed the connection before a complete reply."""


_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}


def _timeout_reason(phase: Phase) -> Reason:
    if phase is Phase.CONNECT:
        return Reason.CONNECT_TIMEOUT
    if phase is Phase.BANNER:
        return Reason.BANNER_TIMEOUT
    if phase is Phase.TLS:
        return Reason.TLS_TIMEOUT
    return Reason.REPLY_TIMEOUT


def reason_for_exception(exc: BaseException, phase: Phase) -> Reason:
    """Map an exception raised during ``phase`` to a reason; the single such table."""
    if isinstance(exc, HostDeadline):
        return Reason.HOST_DEADLINE
    if isinstance(exc, PhaseTimeout):
        return _timeout_reason(exc.phase)
    if phase is Phase.TLS:
        # Whatever stops the TLS handshake (an alert, garbage, a reset or a closed
        # connection) is a failed handshake, with the TLS library's reason.
        return Reason.TLS_TIMEOUT if isinstance(exc, TimeoutError) else Reason.TLS_HANDSHAKE_FAILED
    if isinstance(exc, ReplyTooLong):
        return Reason.REPLY_TOO_LONG
    if isinstance(exc, NotSmtp):
        return Reason.NOT_SMTP
    if isinstance(exc, MalformedReply):
        return Reason.MALFORMED_REPLY
    if isinstance(exc, ConnectionRefusedError):
        return Reason.CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError):
        return Reason.CONNECTION_RESET
    if isinstance(exc, (ConnectionClosed, SMTPServerDisconnected, BrokenPipeError, ConnectionAbortedError)):
        return Reason.CONNECTION_CLOSED
    if isinstance(exc, TimeoutError):
        return _timeout_reason(phase)
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
        return Reason.NETWORK_UNREACHABLE
    if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
        return Reason.CONNECTION_REFUSED
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return _timeout_reason(phase)
    return Reason.SCANNER_ERROR


def _tls_message(exc: BaseException) -> str:
    if isinstance(exc, PhaseTimeout):
        return f"TLS handshake timed out after {exc.seconds:g} s"
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    if isinstance(exc, ssl.SSLError):
        # OpenSSL errors carry library and reason (for example SSL, WRONG_VERSION_NUMBER);
        # an SSLError made elsewhere may have neither.
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        library = getattr(exc, "library", None)
        return f"TLS handshake failed: {library}: {reason}" if library else f"TLS handshake failed: {reason}"
    if isinstance(exc, OSError) and exc.errno:
        return f"TLS handshake failed: {os.strerror(exc.errno)}"
    return f"TLS handshake failed: {exc or type(exc).__name__}"


def failure_from_exception(exc: BaseException, phase: Phase) -> Failure:
    reason = reason_for_exception(exc, phase)
    if reason is Reason.SCANNER_ERROR:
        message = f"bug in mxscan: {type(exc).__name__}: {exc}"
    elif reason in (Reason.TLS_TIMEOUT, Reason.TLS_HANDSHAKE_FAILED):
        message = _tls_message(exc)
    elif isinstance(exc, ReplyError) and exc.data:
        message = f"{exc}: {exc.data[:80]!r}"
    elif isinstance(exc, OSError) and exc.errno:
        # os.strerror, not exc.strerror: asyncio and uvloop word the same error
        # differently, and a record should not depend on the event loop.
        message = os.strerror(exc.errno)
    else:
        message = str(exc) or type(exc).__name__
    return Failure(phase=phase, reason=reason, message=message)
