"""Wire format v1: COSE_Sign1 (RFC 9052, CBOR tag 18, EdDSA) bytes ⇄ Packet.

Shared by the service (decode) and the device SDK (encode). Pure: no I/O. `decode` checks structure
only and never raises: every failure comes back as a `Rejection`. The signature is checked in
`ingest.core.verify`, value ranges (NaN, lat/lon bounds) in `ingest.core.rules`, so that an unsigned
message can never produce more than a `malformed`/`kid_mismatch`/`bad_signature` outcome.
"""

from __future__ import annotations

import functools
import io
import itertools
from collections.abc import Mapping
from typing import Any

import cbor2

from devices.protocol.model import Media, Packet, Reading, Reason, Rejection, SignedMessage

COSE_SIGN1_TAG = 18
ALG_EDDSA = -8
HDR_ALG = 1
HDR_CRIT = 2
HDR_KID = 4
# Header labels this service understands (RFC 9052 §3.1: a label listed in `crit` must be one of them).
_LABEL_NAMES = {HDR_ALG: "alg", HDR_CRIT: "crit", HDR_KID: "kid"}
UNDERSTOOD_LABELS = frozenset({HDR_ALG, HDR_KID})
_PROTECTED_SHAPE = f"a bstr-wrapped map {{1: {ALG_EDDSA}, 4: device_id}}"
WIRE_VERSION = 1
DEVICE_ID_LEN = 32
SIGNATURE_LEN = 64
MAX_MESSAGE_BYTES = 64 * 1024
MAX_READINGS = 256
# The store keeps seq in a signed bigint; a uint64 seq above this could not be stored.
MAX_SEQ = 2**63 - 1
MAX_TS_MS = 2**53  # far beyond any real clock; keeps ts exact in float/JSON consumers
# Nesting depth of a legitimate message is 5 (tag/array/map/readings/vals); a small cap stops CBOR bombs.
_MAX_DEPTH = 16


class _Malformed(Exception):
    """Internal: raised inside the decoder, turned into a Rejection at the boundary."""


class _MissingLabel(_Malformed):
    """A required label is absent from the protected header; the caller says whether the unprotected
    header has it (the protected header alone is cached, without the unprotected one)."""

    def __init__(self, label: int) -> None:
        super().__init__(
            f"{_LABEL_NAMES[label]} (label {label}) is missing from the protected header: "
            f"it must be {_PROTECTED_SHAPE}"
        )
        self.label = label


def _loads(data: bytes) -> Any:
    """Exactly one CBOR item, no duplicate map keys, no trailing bytes: a lenient parser would let two
    implementations read one signed message differently (a parser differential)."""
    fp = io.BytesIO(data)
    item = cbor2.CBORDecoder(fp, allow_duplicate_keys=False, max_depth=_MAX_DEPTH).decode()
    if fp.tell() != len(data):
        raise _Malformed(f"{len(data) - fp.tell()} bytes after the CBOR item")
    return item


_SIG1_PREFIX = cbor2.dumps(["Signature1", b"", b"", b""])[:12]  # array(4) header + "Signature1"


def _bstr(data: bytes) -> bytes:
    """CBOR byte string: the shortest length header (RFC 8949 §4.2.1), then the bytes."""
    n = len(data)
    if n < 24:
        head = bytes((0x40 + n,))
    elif n < 0x100:
        head = b"\x58" + n.to_bytes(1, "big")
    elif n < 0x10000:
        head = b"\x59" + n.to_bytes(2, "big")
    elif n < 0x100000000:
        head = b"\x5a" + n.to_bytes(4, "big")
    else:
        head = b"\x5b" + n.to_bytes(8, "big")
    return head + data


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 §4.4: Sig_structure = ["Signature1", body_protected, external_aad, payload], encoded as
    # cbor2.dumps would (tests/unit/test_codec.py compares); by hand, as it is built for every message.
    return _SIG1_PREFIX + _bstr(protected) + b"\x40" + _bstr(payload)


def signed_bytes(msg: SignedMessage) -> bytes:
    """The exact bytes the device's Ed25519 signature covers."""
    return sig_structure(msg.protected, msg.payload)


def protected_header(device_id: bytes) -> bytes:
    return cbor2.dumps({HDR_ALG: ALG_EDDSA, HDR_KID: device_id})


def encode_payload(packet: Packet) -> bytes:
    readings = []
    for r in packet.readings:
        item: dict[str, Any] = {"ts": r.ts_ms, "lat": float(r.lat), "lon": float(r.lon)}
        if r.acc is not None:
            item["acc"] = float(r.acc)
        if r.alt is not None:
            item["alt"] = float(r.alt)
        item["vals"] = dict(r.vals)
        if r.media is not None:
            item["media"] = {"sha256": r.media.sha256, "uri": r.media.uri}
        readings.append(item)
    return cbor2.dumps(
        {"v": packet.v, "dev": packet.dev, "seq": packet.seq, "kind": packet.kind, "readings": readings}
    )


def encode_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


def decode(message: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> SignedMessage | Rejection:
    """Parse a COSE_Sign1 message. Checks structure and types, not the signature or value ranges."""
    if len(message) > max_bytes:
        return Rejection(Reason.TOO_LARGE, f"{len(message)} bytes > limit {max_bytes}")
    try:
        return _decode(message)
    except _Malformed as exc:
        return Rejection(Reason.MALFORMED, str(exc))
    except Exception as exc:  # the decoder must never raise past the stage: any parser error is input's fault
        return Rejection(Reason.MALFORMED, f"cbor: {type(exc).__name__}: {exc}"[:200])


def _decode(message: bytes) -> SignedMessage:
    outer = _loads(message)
    if not isinstance(outer, cbor2.CBORTag):
        raise _Malformed("not a tagged COSE_Sign1 (tag 18 missing)")
    if outer.tag != COSE_SIGN1_TAG:
        raise _Malformed(f"CBOR tag {outer.tag}, expected {COSE_SIGN1_TAG} (COSE_Sign1)")
    body = outer.value
    if not isinstance(body, list | tuple) or len(body) != 4:
        raise _Malformed("COSE_Sign1 must be an array of 4")
    protected, unprotected, payload, signature = body
    if not isinstance(protected, bytes):
        raise _Malformed(
            f"protected header must be {_PROTECTED_SHAPE}, got {_cbor_type(protected)} "
            "(encode the map, then send those bytes as a bstr)"
        )
    if not isinstance(payload, bytes) or not isinstance(signature, bytes):
        raise _Malformed("payload and signature must be byte strings")
    if not isinstance(unprotected, Mapping):
        raise _Malformed("unprotected header must be a map")
    if len(signature) != SIGNATURE_LEN:
        raise _Malformed(f"signature is {len(signature)} bytes, expected {SIGNATURE_LEN}")
    try:
        kid = _protected_kid(protected)
    except _MissingLabel as exc:
        if exc.label in unprotected:
            raise _Malformed(
                f"{_LABEL_NAMES[exc.label]} (label {exc.label}) must be in the protected header, "
                "found in the unprotected header"
            ) from None
        raise
    except _Malformed as exc:
        if not protected and unprotected:  # h'' with the labels put in the unprotected map instead
            found = ", ".join(f"{_LABEL_NAMES.get(k, k)} (label {k})" for k in unprotected)
            raise _Malformed(f"{exc}; found in the unprotected header instead: {found}") from None
        raise
    if unprotected:  # empty on the fast path: one truth test
        _check_unprotected(unprotected, protected)
    packet = _decode_payload(_loads(payload))
    return SignedMessage(kid=kid, protected=protected, payload=payload, signature=signature, packet=packet)


@functools.lru_cache(maxsize=65_536)
def _protected_kid(protected: bytes) -> bytes:
    """The kid of a valid protected header. Cached: a device sends the same header bytes every time
    (only valid headers are cached; a bad one raises every time, so the error path may be slow)."""
    if not protected:
        raise _Malformed(f"protected header is empty (h''): it must be {_PROTECTED_SHAPE}")
    header = _loads(protected)
    if not isinstance(header, Mapping):
        raise _Malformed(
            f"protected header must be {_PROTECTED_SHAPE}, got {_cbor_type(header)} inside the bstr"
        )
    if HDR_ALG not in header:
        raise _MissingLabel(HDR_ALG)
    alg = header[HDR_ALG]
    if alg != ALG_EDDSA or isinstance(alg, bool):
        raise _Malformed(f"alg (label 1) must be {ALG_EDDSA} (EdDSA), got {alg!r}")
    if HDR_KID not in header:
        raise _MissingLabel(HDR_KID)
    kid = header[HDR_KID]
    if not isinstance(kid, bytes) or len(kid) != DEVICE_ID_LEN:
        got = f"{len(kid)} bytes" if isinstance(kid, bytes) else _cbor_type(kid)
        raise _Malformed(f"kid (label 4) must be the 32-byte device id as a bstr, got {got}")
    if HDR_CRIT in header:
        _check_crit(header[HDR_CRIT])
    return kid


def _check_crit(crit: Any) -> None:
    """RFC 9052 §3.1: crit is a non-empty array of labels (int or text) the recipient must understand;
    a message listing one it does not understand must be rejected, not processed without it."""
    if not isinstance(crit, list | tuple) or not crit:
        got = "an empty array" if isinstance(crit, list | tuple) else _cbor_type(crit)
        raise _Malformed(f"crit (label 2) must be a non-empty array of header labels, got {got}")
    for label in crit:
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise _Malformed(f"crit (label 2) lists {label!r}: labels are integers or text strings")
        if label not in UNDERSTOOD_LABELS:
            understood = ", ".join(f"{n} ({_LABEL_NAMES[n]})" for n in sorted(UNDERSTOOD_LABELS))
            raise _Malformed(
                f"crit (label 2) lists label {label!r}, which this service does not understand "
                f"(it understands {understood}): remove it from crit"
            )


def _check_unprotected(unprotected: Mapping[Any, Any], protected: bytes) -> None:
    """What a non-empty unprotected header may not hold (RFC 9052 §3: a label in at most one of the
    two headers; crit only in the protected one). Other labels are ignored, as the RFC allows."""
    if HDR_CRIT in unprotected:
        raise _Malformed("crit (label 2) must be in the protected header, found in the unprotected header")
    header = _loads(protected)  # valid: _protected_kid has decoded it
    both = sorted((k for k in unprotected if k in header), key=repr)
    if both:
        names = ", ".join(f"{_LABEL_NAMES.get(k, k)} (label {k})" for k in both)
        raise _Malformed(
            f"{names} in both the protected and the unprotected header: keep it in the protected one"
        )


def _cbor_type(value: Any) -> str:
    # Words a firmware author knows from CBOR, for error details.
    if isinstance(value, bool):
        return "a bool"
    for typ, name in ((bytes, "a bstr"), (str, "a text string"), (int, "an integer"), (float, "a float")):
        if isinstance(value, typ):
            return name
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, list | tuple):
        return "an array"
    return "null" if value is None else type(value).__name__


def _uint(value: Any, name: str, limit: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Malformed(f"{name} must be an unsigned integer")
    if value < 0 or value > limit:
        raise _Malformed(f"{name} {value} out of range 0..{limit}")
    return value


def _number(value: Any, name: str) -> float:
    # NaN/inf and range are *values* problems (bad_values), judged after the signature; here only the type.
    if type(value) is float:  # the common case first: a plain float needs no further check
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{name} must be a number")
    if isinstance(value, int) and abs(value) > 2**53:
        raise _Malformed(f"{name} integer too large")
    return float(value)


def _decode_payload(obj: Any) -> Packet:
    if not isinstance(obj, Mapping):
        raise _Malformed("payload must be a map")
    v = obj.get("v")
    if v != WIRE_VERSION or isinstance(v, bool):
        raise _Malformed(f"unknown version v={v!r}")
    dev = obj.get("dev")
    if not isinstance(dev, bytes) or len(dev) != DEVICE_ID_LEN:
        raise _Malformed("dev must be the 32-byte device id")
    seq = _uint(obj.get("seq"), "seq", MAX_SEQ)
    kind = obj.get("kind")
    if not isinstance(kind, str) or not 0 < len(kind) <= 32:
        raise _Malformed("kind must be a short text")
    raw_readings = obj.get("readings")
    if not isinstance(raw_readings, list | tuple):
        raise _Malformed("readings must be an array")
    if not 1 <= len(raw_readings) <= MAX_READINGS:
        raise _Malformed(f"{len(raw_readings)} readings, expected 1..{MAX_READINGS}")
    readings = tuple([_decode_reading(r, i) for i, r in enumerate(raw_readings)])
    for prev, cur in itertools.pairwise(readings):
        if cur.ts_ms < prev.ts_ms:
            raise _Malformed("readings are not in time order")
    return Packet(v=v, dev=dev, seq=seq, kind=kind, readings=readings)


_ABSENT = object()


def _decode_reading(obj: Any, i: int) -> Reading:
    # Runs once per reading: exact-type checks first (cbor2 gives plain dict/int/float/str), and
    # field names for errors built only when a check fails.
    if type(obj) is not dict:
        raise _Malformed(f"reading {i} must be a map")
    get = obj.get
    ts = get("ts")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        ts = _uint(ts, f"readings[{i}].ts", MAX_TS_MS)
    lat = get("lat")
    if type(lat) is not float:
        lat = _number(lat, f"readings[{i}].lat")
    lon = get("lon")
    if type(lon) is not float:
        lon = _number(lon, f"readings[{i}].lon")
    acc = get("acc", _ABSENT)
    if acc is _ABSENT:
        acc = None
    elif type(acc) is not float:
        acc = _number(acc, f"readings[{i}].acc")
    alt = get("alt", _ABSENT)
    if alt is _ABSENT:
        alt = None
    elif type(alt) is not float:
        alt = _number(alt, f"readings[{i}].alt")
    raw_vals = get("vals", _ABSENT)
    if raw_vals is _ABSENT:
        raw_vals = {}
    if type(raw_vals) is not dict or len(raw_vals) > 64:
        raise _Malformed(f"readings[{i}].vals must be a map of at most 64 entries")
    vals: dict[str, float | int] = {}
    for key, value in raw_vals.items():
        if type(key) is not str or not 0 < len(key) <= 64:
            raise _Malformed(f"readings[{i}].vals keys must be short texts")
        if type(value) is float:
            vals[key] = value
            continue
        num = _number(value, f"readings[{i}].vals.{key}")
        vals[key] = value if isinstance(value, int) else num
    media = None
    if "media" in obj:
        m = obj["media"]
        if type(m) is not dict:
            raise _Malformed(f"readings[{i}].media must be a map")
        sha, uri = m.get("sha256"), m.get("uri")
        if not isinstance(sha, bytes) or len(sha) != 32 or not isinstance(uri, str) or len(uri) > 512:
            raise _Malformed(f"readings[{i}].media needs sha256 (32 bytes) and uri (text)")
        media = Media(sha256=sha, uri=uri)
    return Reading(ts, lat, lon, vals, acc, alt, media)
