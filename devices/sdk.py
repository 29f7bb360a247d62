"""What device firmware does: build a packet, sign it as COSE_Sign1, publish it over MQTT (QoS 1)."""

from __future__ import annotations

from collections.abc import Sequence

import aiomqtt

from devices.keys import DeviceIdentity
from ingest.core.codec import WIRE_VERSION, encode_payload, encode_sign1, protected_header, sig_structure
from ingest.core.verify import up_topic
from ingest.model import Packet, Reading


def sign_packet(identity: DeviceIdentity, packet: Packet) -> bytes:
    """COSE_Sign1 over the payload bytes exactly as they will be sent (RFC 9052 §4.4)."""
    protected = protected_header(identity.device_id)
    payload = encode_payload(packet)
    signature = identity.signing_key.sign(sig_structure(protected, payload)).signature
    return encode_sign1(protected, payload, signature)


def build_message(identity: DeviceIdentity, seq: int, kind: str, readings: Sequence[Reading]) -> bytes:
    packet = Packet(v=WIRE_VERSION, dev=identity.device_id, seq=seq, kind=kind, readings=tuple(readings))
    return sign_packet(identity, packet)


async def publish(client: aiomqtt.Client, identity: DeviceIdentity, message: bytes) -> None:
    await client.publish(up_topic(identity.device_id), message, qos=1)
