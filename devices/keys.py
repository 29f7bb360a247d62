"""Device identity: a 32-byte device id and an Ed25519 key pair, kept in a 0600 credential file."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: bytes
    signing_key: SigningKey

    @property
    def pubkey(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def hex_id(self) -> str:
        return self.device_id.hex()


def new_identity(device_id: bytes | None = None) -> DeviceIdentity:
    """A fresh key pair; the id is random unless the manufacturer assigns one."""
    if device_id is not None and len(device_id) != 32:
        raise ValueError("device id must be 32 bytes")
    return DeviceIdentity(device_id or secrets.token_bytes(32), SigningKey.generate())


def identity_from_seed(seed: bytes, device_id: bytes) -> DeviceIdentity:
    return DeviceIdentity(device_id, SigningKey(seed))


def save_identity(identity: DeviceIdentity, path: Path) -> None:
    """Write the credential file readable by its owner only (the private key never leaves it)."""
    data = {
        "device_id": identity.hex_id,
        "pubkey": identity.pubkey.hex(),
        "seed": bytes(identity.signing_key).hex(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def load_identity(path: Path) -> DeviceIdentity:
    try:
        data = json.loads(path.read_text())
        identity = identity_from_seed(bytes.fromhex(data["seed"]), bytes.fromhex(data["device_id"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: not a device credential file ({exc})") from exc
    if identity.pubkey.hex() != data.get("pubkey", identity.pubkey.hex()):
        raise ValueError(f"{path}: pubkey does not match the stored seed")
    return identity
