"""Share paho-mqtt's MQTT 5 property tables instead of rebuilding them for every packet.

paho-mqtt 2.x builds its name and type tables anew in every `Properties()` — one per MQTT 5 PUBLISH
received — and `clear()` (run by `unpack`) scans all 27 names with `hasattr`. In a worker draining
1-reading packets that was about 12 % of the CPU (py-spy, README "Performance"). The tables are never
written after construction, so `install()` builds them once and shares them; `clear()` deletes the
properties actually set. Same attributes and behaviour: tests/unit/test_paho_properties.py checks
pack/unpack against the original class.
"""

from __future__ import annotations

from typing import Any

from paho.mqtt import properties as paho_properties

_PRIVATE = frozenset({"packetType", "types", "names", "properties"})
_original_init = paho_properties.Properties.__init__


def install() -> None:
    """Patch `paho.mqtt.properties.Properties` once (idempotent)."""
    cls: Any = paho_properties.Properties
    if getattr(cls, "_depin_shared_tables", False):
        return
    template = cls.__new__(cls)
    _original_init(template, paho_properties.PacketTypes.PUBLISH)
    types, names, table = template.types, template.names, template.properties

    def __init__(self: Any, packetType: int) -> None:
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "properties", table)

    def clear(self: Any) -> None:
        for name in [n for n in vars(self) if n not in _PRIVATE]:
            delattr(self, name)

    cls.__init__ = __init__
    cls.clear = clear
    cls._depin_shared_tables = True
