"""An independent implementation check: pycose (PyPI), which shares no code with the project's codec,
decodes and verifies the envelopes the signing SDK produces and the service keeps (packets.envelope),
and rejects a tampered one. docs/PROVENANCE.md's recipe does the same with a buyer's envelope."""

from __future__ import annotations

import cbor2
import pytest
from pycose.keys.curves import Ed25519
from pycose.keys.keyparam import KpKty, OKPKpCurve, OKPKpX
from pycose.keys.keytype import KtyOKP
from pycose.keys.okp import OKPKey
from pycose.messages import Sign1Message

from devices.keys import new_identity
from devices.protocol.model import Media, Reading
from devices.sdk import build_message

READINGS = [
    Reading(1_767_225_600_000, 52.52, 13.405, {"temperature_c": 9.5}, acc=3.4),
    Reading(1_767_225_601_000, 52.52, 13.405, {"pm25_ugm3": 12}, media=Media(b"\x02" * 32, "s3://b/x.jpg")),
]


def _decode(envelope: bytes) -> Sign1Message:
    """pycose's `Sign1Message.decode`, less its cbor2 call: pycose 1.1 expects cbor2 5's mutable list
    and dict inside the tag, cbor2 6 gives a tuple and a frozendict (docs/PROVENANCE.md says so too)."""
    tag = cbor2.loads(envelope)
    assert tag.tag == 18  # COSE_Sign1
    protected, unprotected, payload, signature = tag.value
    return Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)


def _key(pubkey: bytes) -> OKPKey:
    return OKPKey.from_dict({KpKty: KtyOKP, OKPKpCurve: Ed25519, OKPKpX: pubkey})


@pytest.mark.parametrize("n", [1, 2])
def test_pycose_verifies_our_envelopes(n: int) -> None:
    ident = new_identity()
    envelope = build_message(ident, 42, "weather", READINGS[:n])
    msg = _decode(envelope)
    msg.key = _key(ident.pubkey)
    assert msg.verify_signature()
    assert msg.phdr_encoded  # alg and kid are protected
    payload = cbor2.loads(msg.payload)
    assert payload["dev"] == ident.device_id and payload["seq"] == 42 and len(payload["readings"]) == n


def test_pycose_rejects_a_tampered_envelope_and_another_key() -> None:
    ident = new_identity()
    envelope = bytearray(build_message(ident, 1, "weather", READINGS[:1]))
    payload = _decode(bytes(envelope)).payload
    i = envelope.index(payload) + len(payload) // 2  # a byte inside the signed payload (a bstr)
    envelope[i] ^= 0x01
    tampered = _decode(bytes(envelope))
    tampered.key = _key(ident.pubkey)
    assert not tampered.verify_signature()
    other = _decode(build_message(ident, 1, "weather", READINGS[:1]))
    other.key = _key(new_identity().pubkey)
    assert not other.verify_signature()
