"""Where the operator CLI finds the chain: RPC URL, deployment file and the signer's key.

Each comes from a command-line option first, then an environment variable, then a default:

- JSON-RPC URL: `--rpc-url`, `DEPIN_CHAIN_RPC_URL`, else `http://127.0.0.1:8545`;
- deployment file: `--deployment`, `DEPIN_DEPLOYMENT_FILE`, else `deployment.json`;
- signer key (commands that send transactions): `--key-file`, `DEPIN_OPERATOR_KEY_FILE`, then the key
  itself in `DEPIN_OPERATOR_KEY`; no default.

The key is never accepted as an option (it would show in `ps` and shell history) and never printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from devices.errors import SettingsError

DEFAULT_RPC_URL = "http://127.0.0.1:8545"
DEFAULT_DEPLOYMENT_FILE = Path("deployment.json")


@dataclass(frozen=True)
class ChainSettings:
    rpc_url: str
    deployment_file: Path
    key_file: Path | None  # explicit file (option or DEPIN_OPERATOR_KEY_FILE)
    key_hex: str | None  # DEPIN_OPERATOR_KEY, only when no file is given

    @classmethod
    def resolve(
        cls,
        *,
        rpc_url: str | None = None,
        deployment_file: Path | None = None,
        key_file: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ChainSettings:
        env = os.environ if env is None else env
        env_key_file = env.get("DEPIN_OPERATOR_KEY_FILE")
        file = key_file or (Path(env_key_file) if env_key_file else None)
        return cls(
            rpc_url=rpc_url or env.get("DEPIN_CHAIN_RPC_URL") or DEFAULT_RPC_URL,
            deployment_file=deployment_file
            or Path(env.get("DEPIN_DEPLOYMENT_FILE") or DEFAULT_DEPLOYMENT_FILE),
            key_file=file,
            key_hex=None if file else (env.get("DEPIN_OPERATOR_KEY") or None),
        )

    def account(self) -> LocalAccount:
        """The signing account. SettingsError if no key is configured or it is not a private key."""
        if self.key_file is not None:
            key, source = read_key(self.key_file), f"key file {self.key_file}"
        elif self.key_hex is not None:
            key, source = self.key_hex.strip(), "DEPIN_OPERATOR_KEY"
        else:
            raise SettingsError(
                "no signer key: pass --key-file FILE or set DEPIN_OPERATOR_KEY_FILE (or DEPIN_OPERATOR_KEY)"
            )
        try:
            return Account.from_key(key)
        except Exception:  # the message could echo the key: say only where it came from
            raise SettingsError(f"{source} does not hold a 32-byte hex private key") from None


def read_key(path: Path) -> str:
    """A hex private key from a file (one line). Never printed, never logged."""
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"cannot read key file {path}: {exc.strerror}") from exc
    if not key:
        raise SettingsError(f"key file {path} is empty")
    return key
