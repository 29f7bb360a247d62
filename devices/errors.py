"""The project's own failures, one family tree, so a caller can tell "our error, with a message fit for
a terminal line" (catch `DepinError`) from a bug (anything else).

It lives in `devices/` because every package may import `devices/` (see README, Layout); errors that
only the service raises derive from these families where they are defined.

- `InputError`: an operator's or a user's input is wrong (a file, an id, an option); nothing was sent.
- `SettingsError`: a setting is missing or unusable; the message names the setting and what to do.
- `ChainError`: a chain call or transaction failed, or the chain is not in the state we need.
"""

from __future__ import annotations


class DepinError(Exception):
    """Base of every failure this project raises on purpose; `str(exc)` is one line for an operator."""


class InputError(DepinError, ValueError):
    """Bad input from an operator or user (a CLI argument, a fleet file, a request)."""


class SettingsError(DepinError, ValueError):
    """A setting is missing or unusable; the message names it and says what to do."""


class ChainError(DepinError):
    """A chain call or transaction failed, or the chain is not in the state the caller needs."""
