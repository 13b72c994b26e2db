"""The project's own error types. The CLI turns any of them into one line and exit code 2; every other
exception is a bug and keeps its traceback."""

from __future__ import annotations


class NnalError(Exception):
    """A user's mistake (bad input, bad option, a busy folder); the message is one line naming the file or field."""


class ConfigError(NnalError, ValueError):
    """An invalid configuration value or strategy option; the message names the field."""


class DatasetError(NnalError, ValueError):
    """A problem with the input dataset. The message is one line: ``<file>: <problem>``."""


class LockedError(NnalError, RuntimeError):
    """Another process holds the experiment folder."""


class ReportError(NnalError, ValueError):
    """An experiment folder or file that cannot be read or holds impossible values; the message names it."""


class EnvironmentProblem(NnalError):
    """The machine cannot run the request: a missing device, a path that is not writable, too little disk."""


class FolderError(NnalError):
    """An experiment folder whose files disagree with its own state (a file missing, damaged or changed)."""
