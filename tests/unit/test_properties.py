"""Property tests on the decoder and the whole pure data path (docs/RELIABILITY.md B11: "the decoder never
raises past the stage"). Whatever comes in, out comes a known reason or an accepted packet.

Deterministic (derandomize, no example database) and bounded: the whole module runs in a few seconds.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devices.keys import identity_from_seed
from devices.protocol import codec
from devices.protocol.model import Reason, Rejection, SignedMessage
from ingest.core import rules
from ingest.model import AcceptedPacket, RejectedMessage
from ingest.pipeline import REJECTION_REASONS, Incoming, PipelineConfig, PipelineState, judge, sort_batch
from tests import vectors
from tests.unit.test_vectors import REGISTRY

V = vectors.load()
T0 = V["t0_ms"]
CFG = PipelineConfig()
ALL_FLAGS = sum(rules.FLAG_NAMES)
DECODE_REASONS = {Reason.MALFORMED, Reason.TOO_LARGE}
VALID = [(v["topic"], bytes.fromhex(v["message"])) for v in V["valid"]]

FAST = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _outcome_ok(out: object, original_payload: bytes | None = None) -> None:
    if isinstance(out, AcceptedPacket):
        assert len(out.flags) == len(out.readings) == len(out.cells)
        assert all(0 <= f <= ALL_FLAGS for f in out.flags)
        if original_payload is not None:
            # Only the signed payload decides acceptance: a mutation that is still accepted must have
            # left the signed bytes alone (it touched the envelope or the unprotected header).
            assert out.payload_digest == hashlib.sha256(original_payload).digest()
    else:
        assert out.reason in REJECTION_REASONS, out  # type: ignore[attr-defined]
        assert out.detail  # type: ignore[attr-defined]


# --- arbitrary input --------------------------------------------------------------------------------


@FAST
@given(data=st.binary(max_size=2048))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    out = codec.decode(data)
    assert isinstance(out, SignedMessage) or out.reason in DECODE_REASONS


# CBOR that parses: nested structures of every major type, sometimes inside tag 18 (COSE_Sign1).
cbor_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),  # also bignums (tags 2/3)
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.sampled_from(["v", "dev", "seq", "kind", "readings", "ts", "lat", "lon", "vals", "media"]),
)
cbor_value = st.recursive(
    cbor_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-10, 10)), inner, max_size=5),
        st.builds(cbor2.CBORTag, st.sampled_from([1, 18, 24, 98, 55799]), inner),
    ),
    max_leaves=30,
)


@FAST
@given(value=cbor_value, wrap=st.booleans())
def test_decode_arbitrary_cbor(value: Any, wrap: bool) -> None:
    data = cbor2.dumps(cbor2.CBORTag(18, value) if wrap else value)
    out = codec.decode(data)
    assert isinstance(out, SignedMessage) or out.reason in DECODE_REASONS


@FAST
@given(payload=cbor_value, protected=st.one_of(cbor_value, st.just({1: -8, 4: b"\x00" * 32})))
def test_decode_arbitrary_cose_fields(payload: Any, protected: Any) -> None:
    """A well-formed COSE_Sign1 shell around arbitrary protected header and payload CBOR."""
    data = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(protected), {}, cbor2.dumps(payload), b"\x00" * 64]))
    out = codec.decode(data)
    assert isinstance(out, SignedMessage) or out.reason in DECODE_REASONS


# --- mutated valid envelopes ------------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
)


def _mutate(data: bytes, ops: list[tuple[str, int, Any]]) -> bytes:
    buf = bytearray(data)
    for op, pos, arg in ops:
        i = pos % (len(buf) + 1)
        if op == "flip" and i < len(buf):
            buf[i] ^= arg
        elif op == "set" and i < len(buf):
            buf[i] = arg
        elif op == "insert":
            buf[i:i] = arg
        elif op == "delete":
            del buf[i : i + arg]
        elif op == "truncate":
            del buf[i:]
    return bytes(buf)


@FAST
@given(which=st.integers(0, len(VALID) - 1), ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_valid_envelopes(which: int, ops: list[tuple[str, int, Any]]) -> None:
    topic, message = VALID[which]
    original = codec.decode(message)
    assert isinstance(original, SignedMessage)
    out = judge(Incoming(topic, _mutate(message, ops), T0), REGISTRY.get, T0, CFG)
    _outcome_ok(out, original.payload)
    event(out.reason.value if isinstance(out, RejectedMessage) else "accepted")


# --- signed but hostile payloads: past the signature, into the rules ---------------------------------

DEVICES = {
    bytes.fromhex(d["device_id"]): identity_from_seed(bytes.fromhex(d["seed"]), bytes.fromhex(d["device_id"]))
    for d in V["devices"].values()
}
# Mostly numbers (what a reading holds), so that many examples get past the decoder into the rules.
number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-200, max_value=200),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.integers(min_value=0, max_value=T0 + 10**9),
)
field_value = st.one_of(number, number, number, cbor_leaf, st.lists(cbor_leaf, max_size=3))
reading_field = st.sampled_from(["ts", "lat", "lon", "acc", "alt", "vals", "media", "extra"])
payload_field = st.sampled_from(["v", "dev", "seq", "kind", "readings", "extra"])


@FAST
@given(
    which=st.integers(0, len(VALID) - 1),
    top=st.one_of(st.just({}), st.dictionaries(payload_field, field_value, max_size=1)),
    per_reading=st.dictionaries(reading_field, field_value, max_size=3),
    vals=st.dictionaries(
        st.sampled_from(sorted({k for b in rules.VALUE_BOUNDS.values() for k in b})), number
    ),
)
def test_resigned_hostile_payloads(
    which: int, top: dict[str, Any], per_reading: dict[str, Any], vals: dict[str, Any]
) -> None:
    """Change any payload field to anything, re-sign with the device's real key, judge."""
    topic, message = VALID[which]
    msg = codec.decode(message)
    assert isinstance(msg, SignedMessage)
    obj = cbor2.loads(msg.payload)
    obj.update({k: v for k, v in top.items() if k not in ("dev",)})
    if isinstance(obj.get("readings"), list) and obj["readings"] and isinstance(obj["readings"][0], dict):
        first = obj["readings"][0]
        first.update(per_reading)
        if isinstance(first.get("vals"), dict):
            first["vals"].update(vals)
    try:
        payload = cbor2.dumps(obj)
    except (ValueError, TypeError, OverflowError):
        return  # not encodable: nothing a device could send
    identity = DEVICES[msg.kid]
    protected = codec.protected_header(msg.kid)
    signature = identity.signing_key.sign(codec.sig_structure(protected, payload)).signature
    raw = codec.encode_sign1(protected, payload, signature)
    out = judge(Incoming(topic, raw, T0), REGISTRY.get, T0, CFG)
    _outcome_ok(out)
    decoded = codec.decode(raw)
    if isinstance(decoded, Rejection):  # the pipeline reports the decoder's reason unchanged
        assert isinstance(out, RejectedMessage) and out.reason == decoded.reason
    event(out.reason.value if isinstance(out, RejectedMessage) else "accepted")


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.lists(mutation, max_size=2)), min_size=1, max_size=12
    )
)
def test_batches_of_mutants_with_shared_state(ops: list[tuple[int, list[tuple[str, int, Any]]]]) -> None:
    """The consumer's view: batches with one state; exactly one outcome per message, all known."""
    state = PipelineState(max_devices=2)
    batch = [Incoming(VALID[i][0], _mutate(VALID[i][1], m), T0) for i, m in ops]
    out = sort_batch(batch, REGISTRY.get, T0, CFG, state)
    assert len(out.accepted) + len(out.rejected) == len(batch)
    for o in [*out.accepted, *out.rejected]:
        _outcome_ok(o)
    assert state.devices <= 2
