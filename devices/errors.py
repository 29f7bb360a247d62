"""The project's own failures, one family tree, so a caller can tell "our error, with a message fit for
a terminal line" (catch `DepinError`) from a bug (anything else).

It lives in `devices/` because every package may import `devices/` (see README, Layout); errors that
only the service raises derive from these families where they are defined.

- `InputError`: an operator's or a user's input is wrong (a file, an id, an option); nothing was sent.
- `SettingsError`: a setting is missing or unusable; the message names the setting and what to do.
- `ChainError`: a chain call or transaction failed, or the chain is not in the state we need;
  `NonceTooLowError` is the one case a sender handles apart (someone else took its nonce).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web3.types import TxReceipt


class DepinError(Exception):
    """Base of every failure this project raises on purpose; `str(exc)` is one line for an operator."""


class InputError(DepinError, ValueError):
    """Bad input from an operator or user (a CLI argument, a fleet file, a request)."""


class SettingsError(DepinError, ValueError):
    """A setting is missing or unusable; the message names it and says what to do."""


class ChainError(DepinError):
    """A chain call or transaction failed, or the chain is not in the state the caller needs.

    When a contract reverted with a custom error we know (devices/chain/reverts.py), `error_name` and
    `error_args` carry it decoded, so a caller can act on the error rather than parse the message (the
    CLI words it for an operator); `tx_hash` and `receipt` name the transaction when there was one.
    Every field is optional: most chain failures (a node down, a missing contract) have none of them.
    """

    def __init__(
        self,
        message: str,
        *,
        error_name: str | None = None,
        error_args: tuple[Any, ...] = (),
        tx_hash: bytes | None = None,
        receipt: TxReceipt | None = None,
    ) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.error_args = error_args
        self.tx_hash = tx_hash
        self.receipt = receipt


class NonceTooLowError(ChainError):
    """The node already has a transaction with this nonce (mined or pending)."""
