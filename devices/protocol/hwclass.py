"""Hardware classes: what kind of device it is decides its H3 resolution and how it may move. Pure.

The chain's hardware-class registry is the source of truth: the service's registry mirror folds its
HwClassSet events and the pipeline judges with that table (`RegistryMirror.classes`). Nothing here is a
global switch: every consumer takes a plain `Mapping[int, HwClass]`, and `DEFAULT_CLASSES` (the
contract's constructor defaults) serves only callers without a mirror (pure tests, the simulator).

Resolutions follow what each sensor actually observes: a dashcam sees a street (res 9, ~0.1 km²), an
air-quality sensor a neighbourhood (res 8, ~0.7 km²), a weather station a district (res 7, ~5 km²,
WeatherXM's cell size, where the 10-stations-per-cell cap comes from).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from h3.api import basic_int as h3_int


@dataclass(frozen=True, slots=True)
class HwClass:
    """One hardware class.

    `max_speed_kmh` is the teleport threshold between consecutive readings of a mobile device. It is 0
    for stationary classes, as in the on-chain registry (`DeviceRegistry.HwClassSet`), and a stationary
    device is never speed-checked: its location is judged by distance from the asserted cell (location
    trust) instead, because a limit of 0 would flag ordinary GPS jitter as motion. Check `mobile`
    before comparing speeds.
    """

    id: int
    name: str  # equals Packet.kind for devices of this class
    h3_res: int
    max_speed_kmh: int
    mobile: bool


DASHCAM = HwClass(id=1, name="dashcam", h3_res=9, max_speed_kmh=200, mobile=True)
WEATHER = HwClass(id=2, name="weather", h3_res=7, max_speed_kmh=0, mobile=False)
AIR = HwClass(id=3, name="air", h3_res=8, max_speed_kmh=0, mobile=False)

# Read-only so a caller cannot change the defaults for everyone; copy with dict(...) to customise.
DEFAULT_CLASSES: Mapping[int, HwClass] = MappingProxyType({c.id: c for c in (DASHCAM, WEATHER, AIR)})


def from_registry(class_id: int, name: str, max_speed_kmh: int, h3_res: int) -> HwClass:
    """A class from the chain registry's fields. The registry has no mobile flag: a class is mobile
    exactly when it has a speed limit, which is how the contract's defaults encode it (0 = stationary).
    The service keeps disabled classes in its mapping: on chain "disabled" only stops new
    registrations, the devices already registered keep being judged (revoke them to stop them)."""
    return HwClass(
        id=class_id, name=name, h3_res=h3_res, max_speed_kmh=max_speed_kmh, mobile=max_speed_kmh > 0
    )


def class_by_id(class_id: int, classes: Mapping[int, HwClass] = DEFAULT_CLASSES) -> HwClass | None:
    """The class registered under `class_id`, or None: an unknown class is an expected outcome
    (a device registered with a class this service does not know yet), not an error."""
    return classes.get(class_id)


def class_by_name(kind: str, classes: Mapping[int, HwClass] = DEFAULT_CLASSES) -> HwClass | None:
    """The class whose name is `kind` (the packet's `kind` field), or None.

    If a registry ever lists two classes with one name, the lowest id wins so the answer does not
    depend on the mapping's insertion order.
    """
    for class_id in sorted(classes):
        if classes[class_id].name == kind:
            return classes[class_id]
    return None


def cell_for(lat: float, lon: float, res: int) -> int:
    """The H3 cell containing (lat, lon) at resolution `res`, as the 64-bit integer the database stores."""
    return h3_int.latlng_to_cell(lat, lon, res)  # the integer API: no string round trip
