"""Revert data → the contract's custom error by name and arguments, raised as a ChainError the caller
can act on (`error_name`, `error_args`) instead of a node's message to parse."""

from __future__ import annotations

import ast
import contextlib
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import (
    abi_to_signature,
    function_signature_to_4byte_selector,
    get_abi_input_types,
    to_bytes,
    to_checksum_address,
)
from web3.exceptions import ContractLogicError

from devices.chain.artifacts import CONTRACT_NAMES, load_artifact
from devices.errors import ChainError


@cache
def _error_selectors() -> dict[bytes, tuple[str, list[str]]]:
    """4-byte selector → (error name, arg types) over all our artifacts, so an error raised by the token
    inside a distributor call is still named."""
    out: dict[bytes, tuple[str, list[str]]] = {
        function_signature_to_4byte_selector("Error(string)"): ("Error", ["string"]),
        function_signature_to_4byte_selector("Panic(uint256)"): ("Panic", ["uint256"]),
    }
    for name in CONTRACT_NAMES:
        for item in load_artifact(name)["abi"]:
            if item["type"] == "error":
                sig = abi_to_signature(item)
                out[function_signature_to_4byte_selector(sig)] = (item["name"], get_abi_input_types(item))
    return out


def decode_revert(data: bytes | str | None) -> tuple[str, tuple[Any, ...]] | None:
    """(error name, args) for revert data, or None if it is empty or unknown."""
    if isinstance(data, str):
        try:
            data = to_bytes(hexstr=data)
        except ValueError:
            return None
    if not data or len(data) < 4:
        return None
    entry = _error_selectors().get(bytes(data[:4]))
    if entry is None:
        return None
    name, types = entry
    try:
        args = abi_decode(types, bytes(data[4:]))
    except Exception:  # malformed args: still worth reporting the name
        return name, ()
    return name, tuple(
        to_checksum_address(a) if t == "address" else a for t, a in zip(types, args, strict=True)
    )


def _revert_data_of(exc: BaseException) -> Any:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if data is None and exc.args and isinstance(exc.args[0], str):
        # eth-tester's TransactionFailed has only a message: "execution reverted: b'<revert bytes>'".
        msg = exc.args[0]
        prefix = "execution reverted: "
        if msg.startswith(prefix + "b'") or msg.startswith(prefix + 'b"'):
            with contextlib.suppress(ValueError, SyntaxError):
                data = ast.literal_eval(msg[len(prefix) :])
    return data


def revert_error(label: str, exc: BaseException, **kw: Any) -> ChainError:
    """The ChainError for a revert of `label` (a function name), its custom error decoded if known."""
    decoded = decode_revert(_revert_data_of(exc))
    if decoded is None:
        return ChainError(f"{label} reverted: {exc}", **kw)
    name, args = decoded
    shown = ", ".join(a.hex() if isinstance(a, bytes) else str(a) for a in args)
    return ChainError(f"{label} reverted: {name}({shown})", error_name=name, error_args=args, **kw)


def is_revert(exc: BaseException) -> bool:
    # Nodes raise ContractLogicError; eth-tester raises its own TransactionFailed (not imported here:
    # eth-tester is an optional dependency).
    return isinstance(exc, ContractLogicError) or type(exc).__name__ == "TransactionFailed"


def call_label(fn: Any) -> str:
    """A contract call's function name for messages ("constructor" for a deploy)."""
    name = getattr(fn, "fn_name", None) or getattr(fn, "abi_element_identifier", None) or "constructor"
    return str(name)
