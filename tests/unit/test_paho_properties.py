"""The shared-table patch of paho's Properties keeps paho's behaviour (ingest/adapters/paho_properties.py)."""

from __future__ import annotations

from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import MQTTException, Properties

from ingest.adapters import paho_properties


def original(packet_type: int) -> Any:
    props = Properties.__new__(Properties)
    paho_properties._original_init(props, packet_type)
    return props


def test_install_is_idempotent_and_tables_equal_the_originals() -> None:
    paho_properties.install()
    paho_properties.install()
    ref, new = original(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    assert (new.types, new.names, new.properties) == (ref.types, ref.names, ref.properties)
    assert new.packetType == PacketTypes.PUBLISH


@pytest.mark.parametrize(
    "fill",
    [
        {},
        {"MessageExpiryInterval": 60, "ContentType": "application/cbor"},
        {"UserProperty": [("a", "1"), ("b", "2")], "CorrelationData": b"\x00\x01"},
    ],
)
def test_pack_unpack_match_the_original(fill: dict[str, Any]) -> None:
    paho_properties.install()
    ref, new = original(PacketTypes.PUBLISH), Properties(PacketTypes.PUBLISH)
    for name, value in fill.items():
        setattr(ref, name, value)
        setattr(new, name, value)
    assert new.pack() == ref.pack()
    back = Properties(PacketTypes.PUBLISH)
    back.SubscriptionIdentifier = [7]  # set before unpack: unpack must clear it
    back.unpack(ref.pack())
    assert back.json() == ref.json()
    assert not hasattr(back, "SubscriptionIdentifier")
    assert back.isEmpty() == (not fill)


def test_rules_still_enforced() -> None:
    paho_properties.install()
    with pytest.raises(MQTTException):
        Properties(PacketTypes.PUBLISH).ReceiveMaximum = 10  # not a PUBLISH property
    with pytest.raises(MQTTException):
        Properties(PacketTypes.PUBLISH).NoSuchThing = 1
