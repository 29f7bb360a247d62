"""Codec round trip and the shared conformance vectors (docs/DESIGN.md §3, docs/RELIABILITY.md B)."""

from __future__ import annotations

import cbor2
import pytest

from devices.keys import identity_from_seed, new_identity
from devices.protocol import codec
from devices.protocol.model import Media, Packet, Reading, Reason, Rejection, SignedMessage
from devices.protocol.topics import device_from_topic, up_topic
from devices.sdk import build_message, sign_packet
from ingest.core import rules
from ingest.core.verify import check_signature, verify
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
    short_key = check_signature(msg, ident.pubkey[:31])  # a malformed registry key verifies nothing
    assert short_key is not None and short_key.reason == Reason.BAD_SIGNATURE


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


# --- docs/RELIABILITY.md B11, case by case (beyond the shared vectors) ---------------------------------

_DEV = b"\x07" * 32


def _payload(**changes: object) -> dict:
    reading = {"ts": T0, "lat": 52.5, "lon": 13.4, "vals": {"temperature_c": 12.5}}
    reading.update(changes.pop("reading", {}))  # type: ignore[call-overload]
    obj = {"v": 1, "dev": _DEV, "seq": 1, "kind": "weather", "readings": [reading]}
    obj.update(changes)
    return obj


def _envelope(
    payload: bytes, protected: bytes | None = None, unprotected: object = None, sig: bytes = b"\0" * 64
) -> bytes:
    prot = protected if protected is not None else codec.protected_header(_DEV)
    return cbor2.dumps(cbor2.CBORTag(18, [prot, {} if unprotected is None else unprotected, payload, sig]))


def _bytes_of(obj: dict) -> bytes:
    return cbor2.dumps(obj)


@pytest.mark.parametrize(
    ("case", "message", "reason"),
    [
        ("ok", _envelope(_bytes_of(_payload())), None),
        ("v true", _envelope(_bytes_of(_payload(v=True))), Reason.MALFORMED),
        ("v 2", _envelope(_bytes_of(_payload(v=2))), Reason.MALFORMED),
        ("seq 2^63-1", _envelope(_bytes_of(_payload(seq=2**63 - 1))), None),
        ("seq 2^63", _envelope(_bytes_of(_payload(seq=2**63))), Reason.MALFORMED),
        ("seq 2^64 bignum", _envelope(_bytes_of(_payload(seq=2**64))), Reason.MALFORMED),
        ("seq float", _envelope(_bytes_of(_payload(seq=1.0))), Reason.MALFORMED),
        ("seq bool", _envelope(_bytes_of(_payload(seq=True))), Reason.MALFORMED),
        ("ts > 2^53", _envelope(_bytes_of(_payload(reading={"ts": 2**53 + 1}))), Reason.MALFORMED),
        ("lat text", _envelope(_bytes_of(_payload(reading={"lat": "52.5"}))), Reason.MALFORMED),
        ("huge int value", _envelope(_bytes_of(_payload(reading={"vals": {"x": 2**60}}))), Reason.MALFORMED),
        ("vals not a map", _envelope(_bytes_of(_payload(reading={"vals": [1]}))), Reason.MALFORMED),
        (
            "media short hash",
            _envelope(_bytes_of(_payload(reading={"media": {"sha256": b"1", "uri": ""}}))),
            Reason.MALFORMED,
        ),
        ("kind empty", _envelope(_bytes_of(_payload(kind=""))), Reason.MALFORMED),
        ("dev short", _envelope(_bytes_of(_payload(dev=b"\1"))), Reason.MALFORMED),
        ("payload not a map", _envelope(cbor2.dumps([1, 2])), Reason.MALFORMED),
        ("payload not cbor", _envelope(b"\xff\xfe"), Reason.MALFORMED),
        ("payload trailing bytes", _envelope(_bytes_of(_payload()) + b"\x00"), Reason.MALFORMED),
        # duplicate keys, hand-encoded: a map of 2 with key 1 twice (cbor2 cannot write it from a dict)
        (
            "protected dup key",
            _envelope(_bytes_of(_payload()), protected=b"\xa2\x01\x27\x01\x27"),
            Reason.MALFORMED,
        ),
        (
            "alg true",
            _envelope(_bytes_of(_payload()), protected=cbor2.dumps({1: True, 4: _DEV})),
            Reason.MALFORMED,
        ),
        ("alg missing", _envelope(_bytes_of(_payload()), protected=cbor2.dumps({4: _DEV})), Reason.MALFORMED),
        (
            "kid short",
            _envelope(_bytes_of(_payload()), protected=cbor2.dumps({1: -8, 4: b"\1"})),
            Reason.MALFORMED,
        ),
        ("unprotected a list", _envelope(_bytes_of(_payload()), unprotected=[]), Reason.MALFORMED),
        ("signature 63 bytes", _envelope(_bytes_of(_payload()), sig=b"\0" * 63), Reason.MALFORMED),
        ("array of 3", cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b""])), Reason.MALFORMED),
        ("depth bomb", b"\x81" * 5000 + b"\x00", Reason.MALFORMED),
        ("empty", b"", Reason.MALFORMED),
        ("just at the size limit", b"\x00" * codec.MAX_MESSAGE_BYTES, Reason.MALFORMED),
        ("one byte over", b"\x00" * (codec.MAX_MESSAGE_BYTES + 1), Reason.TOO_LARGE),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_decode_cases(case: str, message: bytes, reason: Reason | None) -> None:
    out = codec.decode(message)
    if reason is None:
        assert isinstance(out, SignedMessage), out
    else:
        assert isinstance(out, Rejection) and out.reason == reason, (case, out)
        assert out.detail


@pytest.mark.parametrize(
    ("reading", "bad"),
    [
        ({}, False),
        ({"lat": float("nan")}, True),
        ({"lon": float("inf")}, True),
        ({"lat": 90.0, "lon": -180.0}, False),
        ({"lat": -90.01}, True),
        ({"lon": 180.01}, True),
        ({"acc": -1.0}, True),
        ({"acc": float("nan")}, True),
        ({"alt": float("-inf")}, True),
        ({"vals": {"temperature_c": float("nan")}}, True),
        ({"vals": {"temperature_c": 99.0}}, False),  # out of bounds is a flag, not a rejection
        ({"vals": {"a": 1.0, "b": float("-inf"), "c": 2}}, True),
        ({"vals": {"a": float("inf"), "b": float("-inf")}}, True),  # their sum is NaN: still found
        ({"vals": {"a": 1e308, "b": 1e308}}, False),  # finite values whose sum overflows
        ({"vals": {"a": 2**53, "b": -(2**53), "c": 0.5}}, False),
    ],
)
def test_values_that_are_not_numbers_on_earth_are_bad_values(reading: dict, bad: bool) -> None:
    msg = codec.decode(_envelope(_bytes_of(_payload(reading=reading))))
    assert isinstance(msg, SignedMessage)
    out = rules.check_coordinates(msg.packet)
    assert (out.reason if out else None) == (Reason.BAD_VALUES if bad else None)


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536])
def test_sig_structure_is_what_cbor2_encodes(n: int) -> None:
    protected, payload = b"\xa2" * n, b"\xab" * (n + 1)
    assert codec.sig_structure(protected, payload) == cbor2.dumps(["Signature1", protected, b"", payload])
