"""MQTT topics of wire format v1: a device publishes on `depin/v1/{device_id_hex}/up` and hears the
service's feedback on `depin/v1/{device_id_hex}/ack`. Pure."""

from __future__ import annotations

from devices.protocol.codec import DEVICE_ID_LEN

TOPIC_PREFIX = "depin/v1/"
UP_SUFFIX = "/up"


def up_topic(device_id: bytes) -> str:
    return f"{TOPIC_PREFIX}{device_id.hex()}{UP_SUFFIX}"


def ack_topic(device_id: bytes) -> str:
    return f"{TOPIC_PREFIX}{device_id.hex()}/ack"


def device_from_topic(topic: str) -> bytes | None:
    """`depin/v1/{64 hex}/up` → the 32-byte id; anything else → None."""
    if not (topic.startswith(TOPIC_PREFIX) and topic.endswith(UP_SUFFIX)):
        return None
    hex_id = topic[len(TOPIC_PREFIX) : -len(UP_SUFFIX)]
    if len(hex_id) != 2 * DEVICE_ID_LEN:
        return None
    try:
        return bytes.fromhex(hex_id)
    except ValueError:
        return None
