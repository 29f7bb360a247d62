"""Local chains for tests, the devnet and the no-setup demo.

- `start_anvil()`: the anvil binary from `npm ci --prefix contracts` (@foundry-rs/anvil), on a free port.
- `start_eth_tester()`: an in-process py-evm chain behind web3's AsyncEthereumTesterProvider. Slow
  (~20 tx/s, `get_logs` takes seconds) — only for the tiny demo when Node is not installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.errors import ChainError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NODE_MODULES = REPO_ROOT / "contracts" / "node_modules"
# anvil's (and hardhat's) public, well-known dev mnemonic: its accounts are funded on every anvil chain.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_CHAIN_ID = 31337
_LISTENING = re.compile(rb"Listening on (\d+\.\d+\.\d+\.\d+):(\d+)")


class LocalChainError(ChainError):
    pass


def anvil_path(node_modules_dir: Path | None = None) -> Path | None:
    """The anvil executable installed by npm, or None.

    Prefers the native binary of the platform package over the `.bin/anvil` Node wrapper: it starts
    faster and a signal reaches anvil itself instead of a wrapper that has to forward it.
    """
    nm = Path(node_modules_dir) if node_modules_dir else DEFAULT_NODE_MODULES
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    system = platform.system().lower()
    for candidate in (nm / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil", nm / ".bin" / "anvil"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.asynccontextmanager
async def start_anvil(
    node_modules_dir: Path | None = None,
    *,
    extra_args: tuple[str, ...] = (),
    startup_timeout: float = 15.0,
    log_path: Path | None = None,
) -> AsyncIterator[str]:
    """Run anvil on 127.0.0.1 and a free port; yield its HTTP URL; stop it on exit.

    anvil logs every request. Its output goes to a file (`log_path`, else one in a temporary
    directory), not a pipe: a pipe is only drained while our event loop runs, and a test blocked in
    synchronous code (or a busy demo) let it fill, which froze anvil mid-request for good.
    """
    exe = anvil_path(node_modules_dir)
    if exe is None:
        raise LocalChainError("anvil not found: run `npm ci --prefix contracts`")
    with contextlib.ExitStack() as stack:
        if log_path is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="depin-anvil-"))
            log_path = Path(tmp) / "anvil.log"
        log_file = stack.enter_context(await asyncio.to_thread(open, log_path, "wb"))
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *extra_args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: the Node wrapper's child dies with it
        )
        try:
            url = await _wait_listening(proc, log_path, startup_timeout)
            log.debug("anvil started", extra={"url": url, "pid": proc.pid, "log": str(log_path)})
            yield url
        finally:
            await _stop(proc)


async def _wait_listening(proc: asyncio.subprocess.Process, log_path: Path, timeout: float) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        text = await asyncio.to_thread(log_path.read_bytes)
        if m := _LISTENING.search(text):
            return f"http://{m.group(1).decode()}:{int(m.group(2))}"
        if proc.returncode is not None or asyncio.get_running_loop().time() > deadline:
            what = "exited" if proc.returncode is not None else f"did not listen within {timeout:g} s"
            tail = b"\n".join(text.splitlines()[-20:]).decode(errors="replace")
            raise LocalChainError(f"anvil {what}:\n{tail}")
        await asyncio.sleep(0.02)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def dev_accounts(count: int = 10, mnemonic: str = ANVIL_MNEMONIC) -> list[LocalAccount]:
    """anvil's funded dev accounts, derived from the public mnemonic (no key literal in the repo)."""
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}") for i in range(count)]


@contextlib.asynccontextmanager
async def start_eth_tester() -> AsyncIterator[tuple[AsyncWeb3[Any], list[LocalAccount]]]:
    """An in-process EVM (py-evm) with ten funded accounts whose keys we hold, so the same local-signing
    code path as on a real node is used (eth-tester's unlocked accounts are not relied upon)."""
    try:
        from web3.providers.eth_tester import AsyncEthereumTesterProvider
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise LocalChainError("eth-tester not installed: pip install 'depin-ingest[embedded]'") from exc
    provider = AsyncEthereumTesterProvider()
    w3 = AsyncWeb3(provider)
    keys = provider.ethereum_tester.backend.account_keys
    accounts: list[LocalAccount] = [Account.from_key(k.to_bytes()) for k in keys]
    try:
        yield w3, accounts
    finally:
        # Nothing to close (no sockets); drop the references so the py-evm chain can be collected.
        del provider, w3
