"""Adversaries: each returns `(topic, message bytes)` ready for `publish_raw`, and the reason it should earn.

forged               valid structure, wrong key            → bad_signature
unregistered_device  fresh identity, not on chain          → unknown_device
replay_of            the same bytes again                  → duplicate (absorbed, no second row)
seq_reuse            the real key, an old seq, new content → replay
teleporting          a dashcam 50 km away within 0.5 s      → stored, flagged implausible_motion
spoofing             a station 5 km from its asserted cell → stored, location trust 0 (off_location)
media_copier         a dashcam re-sending another's frame   → stored, both flagged media_reuse
"""

from __future__ import annotations

import hashlib

from nacl.signing import SigningKey

from devices.keys import DeviceIdentity, new_identity
from devices.protocol.codec import decode
from devices.protocol.hwclass import WEATHER
from devices.protocol.model import Rejection, SignedMessage
from devices.protocol.topics import up_topic
from devices.sdk import build_message
from simulator.fleet import SimDevice, offset_latlon, readings_for, route_position, timestamps_for

Message = tuple[str, bytes]


def forged(dev: SimDevice, now_ms: int) -> Message:
    """What someone without the device's key can send: a plausible packet signed with another key.

    Does not advance the device's seq: the real device never sent it.
    """
    wrong = DeviceIdentity(dev.device_id, SigningKey(hashlib.sha256(b"forger" + dev.device_id).digest()))
    seq = dev.seq + 1
    readings = readings_for(dev, seq, timestamps_for(dev, now_ms, 1, 1000))
    return dev.topic, build_message(wrong, seq, dev.kind, readings)


def unregistered_device(
    now_ms: int, *, lat: float = 37.7749, lon: float = -122.4194, identity: DeviceIdentity | None = None
) -> Message:
    """A correctly signed weather packet from a device the registry has never seen (`identity`: one
    with a broker login, for a secured broker; default a new one)."""
    identity = identity or new_identity()
    stranger = SimDevice(
        identity, WEATHER.name, WEATHER.id, owner="0x" + "00" * 20, lat=lat, lon=lon, asserted_cell=0
    )
    readings = readings_for(stranger, 1, [now_ms])
    return up_topic(identity.device_id), build_message(identity, 1, WEATHER.name, readings)


def replay_of(message: bytes) -> Message:
    """Anyone who saw a message can send it again, byte for byte, on its device's topic."""
    return up_topic(_decoded(message).kid), message


def _decoded(message: bytes) -> SignedMessage:
    decoded = decode(message)
    if isinstance(decoded, Rejection):
        raise ValueError(f"not a valid message: {decoded.detail}")
    return decoded


def seq_reuse(dev: SimDevice, now_ms: int, seq: int = 1) -> Message:
    """The device itself (say after a counter reset) signs new content under an already used seq."""
    ts = max(now_ms, dev.last_ts_ms + 1)
    readings = readings_for(dev, seq, [ts])
    return dev.topic, build_message(dev.identity, seq, dev.kind, readings)


def teleporting(dev: SimDevice, now_ms: int, jump_m: float = 50_000.0) -> Message:
    """A dashcam whose GPS jumps `jump_m` away for one reading and back, 500 ms apart each (the device's
    own key, next seq). Back on its route at the end, so the service's newest fix of the device is an
    honest one whatever order its packets are judged in (N workers on a round-robin broker): the
    packet is flagged by its own jump, and the device's honest packets judged after it are not."""
    if not dev.mobile:
        raise ValueError("teleporting needs a mobile device")
    dev.seq += 1
    t0 = max(now_ms - 1000, dev.last_ts_ms + 1)
    lat, lon, _ = route_position(dev, t0)  # honest first reading, then the jump, then back
    back_lat, back_lon, _ = route_position(dev, t0 + 1000)
    here, there = (lat, lon), offset_latlon(lat, lon, jump_m, 0.0)
    readings = readings_for(
        dev, dev.seq, [t0, t0 + 500, t0 + 1000], positions=[here, there, (back_lat, back_lon)]
    )
    dev.last_ts_ms = t0 + 1000
    return dev.topic, build_message(dev.identity, dev.seq, dev.kind, readings)


def spoofing(dev: SimDevice, now_ms: int, offset_m: float = 5_000.0) -> Message:
    """A station reporting from `offset_m` north of where it asserted (the device's own key, next seq)."""
    if dev.mobile:
        raise ValueError("spoofing needs a stationary device")
    dev.seq += 1
    ts = max(now_ms, dev.last_ts_ms + 1)
    away = offset_latlon(dev.lat, dev.lon, 0.0, offset_m)
    readings = readings_for(dev, dev.seq, [ts], positions=[away])
    dev.last_ts_ms = ts
    return dev.topic, build_message(dev.identity, dev.seq, dev.kind, readings)


def media_copier(dev: SimDevice, victim_message: bytes, now_ms: int) -> Message:
    """A dashcam that sends, under its own key and next seq, the frames of another device's message
    (the store then flags both devices' readings media_reuse)."""
    if dev.kind != "dashcam":
        raise ValueError("media_copier needs a dashcam")
    frames = [r.media for r in _decoded(victim_message).packet.readings if r.media is not None]
    if not frames:
        raise ValueError("the victim's message carries no media")
    dev.seq += 1
    timestamps = timestamps_for(dev, now_ms, len(frames), 1000)
    readings = [
        r._replace(media=m) for r, m in zip(readings_for(dev, dev.seq, timestamps), frames, strict=True)
    ]
    dev.last_ts_ms = timestamps[-1]
    return dev.topic, build_message(dev.identity, dev.seq, dev.kind, readings)
