"""Codec round trip and the shared conformance vectors (ARCHITECTURE §2, RELIABILITY B)."""

from __future__ import annotations

import pytest

from devices.keys import identity_from_seed, new_identity
from devices.sdk import build_message, sign_packet
from ingest.core import codec, rules
from ingest.core.verify import check_signature, device_from_topic, up_topic, verify
from ingest.model import Media, Packet, Reading, Reason, Rejection, SignedMessage
from tests import vectors

V = vectors.load()
T0 = V["t0_ms"]


def judge(vector: dict) -> SignedMessage | Rejection:
    """decode → verify → packet rules, as the pipeline does, with the clock pinned at t0."""
    msg = codec.decode(bytes.fromhex(vector["message"]))
    if isinstance(msg, Rejection):
        return msg
    dev = verify(msg, device_from_topic(vector["topic"]), vectors.registry().get)
    if isinstance(dev, Rejection):
        return dev
    return rules.check_packet(msg.packet, T0, rules.TimeLimits()) or msg


@pytest.mark.parametrize("vector", V["valid"], ids=lambda v: v["id"])
def test_valid_vectors_accepted(vector: dict) -> None:
    out = judge(vector)
    assert isinstance(out, SignedMessage), out
    assert out.packet.seq == vector["expect"]["seq"]
    assert len(out.packet.readings) == vector["expect"]["readings"]
    assert out.payload == bytes.fromhex(vector["payload_cbor"])


@pytest.mark.parametrize("vector", V["invalid"], ids=lambda v: v["id"])
def test_invalid_vectors_rejected_with_their_reason(vector: dict) -> None:
    out = judge(vector)
    assert isinstance(out, Rejection), f"{vector['id']} was accepted"
    assert out.reason == vector["reason"], out.detail


def test_vector_devices_sign_like_the_sdk() -> None:
    """Our SDK, given a vector device's seed and the same payload, produces a verifying message."""
    dev = V["devices"]["weather-1"]
    ident = identity_from_seed(bytes.fromhex(dev["seed"]), bytes.fromhex(dev["device_id"]))
    assert ident.pubkey.hex() == dev["pubkey"]
    original = codec.decode(bytes.fromhex(V["valid"][0]["message"]))
    assert isinstance(original, SignedMessage)
    ours = codec.decode(sign_packet(ident, original.packet))
    assert isinstance(ours, SignedMessage)
    assert ours.payload == original.payload  # same canonical CBOR as the independent implementation
    assert check_signature(ours, ident.pubkey) is None


def test_round_trip_every_field() -> None:
    ident = new_identity()
    readings = [
        Reading(
            ts_ms=T0,
            lat=37.5,
            lon=-122.25,
            vals={"speed_mps": 11.5, "count": 3},
            acc=3.5,
            alt=12.0,
            media=Media(b"\x01" * 32, "ipfs://frame"),
        ),
        Reading(ts_ms=T0 + 1000, lat=37.6, lon=-122.2, vals={}),
    ]
    raw = build_message(ident, 42, "dashcam", readings)
    msg = codec.decode(raw)
    assert isinstance(msg, SignedMessage)
    assert msg.kid == ident.device_id
    assert msg.packet == Packet(v=1, dev=ident.device_id, seq=42, kind="dashcam", readings=tuple(readings))
    assert check_signature(msg, ident.pubkey) is None
    wrong = check_signature(msg, new_identity().pubkey)
    assert wrong is not None and wrong.reason == Reason.BAD_SIGNATURE


def test_size_limit_is_checked_before_parsing() -> None:
    out = codec.decode(b"\x00" * (codec.MAX_MESSAGE_BYTES + 1))
    assert isinstance(out, Rejection) and out.reason == Reason.TOO_LARGE


def test_topic_parsing() -> None:
    did = bytes(range(32))
    assert device_from_topic(up_topic(did)) == did
    for bad in ["depin/v1/zz/up", "depin/v1/" + "0" * 63 + "/up", "other/" + did.hex() + "/up", ""]:
        assert device_from_topic(bad) is None


@pytest.mark.parametrize(
    ("offset_ms", "reason"),
    [
        (31_000, Reason.CLOCK_SKEW),
        (-2 * 86_400_000 - 1, Reason.TOO_LATE),
        (29_000, None),
        (-86_400_000, None),
    ],
)
def test_time_window(offset_ms: int, reason: Reason | None) -> None:
    p = Packet(1, b"\x00" * 32, 1, "weather", (Reading(T0 + offset_ms, 1.0, 1.0, {}),))
    out = rules.check_time(p, T0, rules.TimeLimits())
    assert (out.reason if out else None) == reason
