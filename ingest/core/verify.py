"""Who sent it: topic / kid / payload agreement, registry status, Ed25519 signature. Pure (no I/O).

Order matters: identity agreement first (cheap, needs no key), then the registry, then the signature,
so that an unregistered or forged message is never judged on its contents.
"""

from __future__ import annotations

from collections.abc import Callable

from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from devices.protocol.codec import signed_bytes
from devices.protocol.model import DeviceRecord, Reason, Rejection, SignedMessage


def check_identity(msg: SignedMessage, topic_device: bytes | None) -> Rejection | None:
    if topic_device is None:
        return Rejection(Reason.KID_MISMATCH, "topic does not name a device (depin/v1/{id}/up)")
    if msg.kid != topic_device:
        return Rejection(Reason.KID_MISMATCH, "COSE kid differs from the topic's device id")
    if msg.packet.dev != msg.kid:
        return Rejection(Reason.KID_MISMATCH, "payload dev differs from the COSE kid")
    return None


def check_signature(msg: SignedMessage, pubkey: bytes) -> Rejection | None:
    try:
        # The binding, not VerifyKey(pubkey).verify: the same libsodium call without building a key
        # object per message.
        crypto_sign_open(msg.signature + signed_bytes(msg), pubkey)
    except (BadSignatureError, ValueError):  # ValueError: a key that is not 32 bytes verifies nothing
        return Rejection(Reason.BAD_SIGNATURE, "Ed25519 signature does not verify with the registered key")
    return None


def verify(
    msg: SignedMessage,
    topic_device: bytes | None,
    lookup: Callable[[bytes], DeviceRecord | None],
) -> DeviceRecord | Rejection:
    """Return the device record of the signer, or why the message is not from a live registered device."""
    if (rej := check_identity(msg, topic_device)) is not None:
        return rej
    device = lookup(msg.kid)
    if device is None:
        return Rejection(Reason.UNKNOWN_DEVICE, "device id is not in the on-chain registry")
    if not device.active:
        return Rejection(Reason.REVOKED_DEVICE, "device was revoked on chain")
    if (rej := check_signature(msg, device.pubkey)) is not None:
        return rej
    return device
