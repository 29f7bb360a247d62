"""What device firmware does: build a packet, sign it as COSE_Sign1, publish it over MQTT (QoS 1).

On a secured broker (deploy/mosquitto.conf) a device logs in as its device id (hex) with the password
`depin broker dynsec --cred` stored in its credential file (`BrokerLogin.from_credentials`), optionally
over TLS. It may then publish only on its own …/up and read only its own …/ack.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from devices.keys import DeviceIdentity
from devices.protocol.codec import WIRE_VERSION, encode_payload, encode_sign1, protected_header, sig_structure
from devices.protocol.model import Packet, Reading
from devices.protocol.topics import up_topic


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


@dataclass(frozen=True)
class BrokerLogin:
    """How a client logs in to the broker: username/password and TLS (system CAs or `tls_ca_file`)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca_file: str | None = None

    @classmethod
    def from_credentials(
        cls, cred: Path, *, tls: bool = False, tls_ca_file: str | None = None
    ) -> BrokerLogin:
        """The device's login from its credential file (`"mqtt_password"`, from `depin broker dynsec`)."""
        try:
            data = json.loads(Path(cred).read_text())
            username, password = str(data["device_id"]), str(data["mqtt_password"])
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(
                f"{cred}: no MQTT login in this credential file ({exc}); "
                f"run `depin broker dynsec --file … --cred {cred}`"
            ) from None
        return cls(username, password, tls=tls, tls_ca_file=tls_ca_file)

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `aiomqtt.Client`."""
        ctx = None
        if self.tls or self.tls_ca_file:
            ctx = ssl.create_default_context(cafile=self.tls_ca_file)
        return {"username": self.username, "password": self.password, "tls_context": ctx}
