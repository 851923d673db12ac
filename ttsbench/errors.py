"""The one base class of the failures a user causes and can fix.

Why: the command line must tell "your input is wrong" (one clear line naming the file, line or
option, exit 2) from "the program is wrong" (a bug: one line plus where the traceback was
written). Every module raises a subclass of `UserError` for the first kind, so the CLI's error
boundary needs no list of exception types. This module imports nothing from ttsbench, so any
module may use it.
"""

from __future__ import annotations


class UserError(Exception):
    """An expected failure caused by the input; its message is complete and shown as it is."""


class UnknownSystemError(UserError, KeyError):
    """A system name that is not registered (a KeyError too, for callers that look names up)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(UserError, ValueError):
    """A file that cannot be used as a ttsbench checkpoint: missing, damaged, foreign or unsafe."""


class DeviceUnavailable(UserError, RuntimeError):
    """The device asked for is not present on this machine."""


class RunStoreError(UserError, ValueError):
    """A run folder that cannot be used as asked: another suite's run, or damaged results."""


class OptionError(UserError, ValueError):
    """A command-line option or argument whose value cannot be used."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), cut to `limit` characters: what
    a one-line error keeps of a library's multi-line text."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]
