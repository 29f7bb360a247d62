"""`depin hw …`: the registry's hardware-class table (the classes' names, speed limits and cell
resolutions the service judges devices by), read from its events and changed by an operator."""

from __future__ import annotations

import argparse
import re
from dataclasses import replace

from devices.cli.common import chain_command, chain_options, fetch_hw_classes, open_chain, tx_line
from devices.errors import InputError
from devices.inputs import is_mobile
from devices.protocol.registry_fold import HwClassInfo
from devices.settings import ChainSettings


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hw = sub.add_parser("hw", help="the on-chain hardware-class registry")
    hsub = hw.add_subparsers(dest="hw_command", required=True)
    chain = [chain_options()]
    ls = hsub.add_parser("list", parents=chain, help="hardware classes")
    ls.set_defaults(func=chain_command(lambda a, s: hw_list(s)))
    st = hsub.add_parser("set", parents=chain, help="add or change a hardware class (operator)")
    st.add_argument("class_id", type=int, help="class id (0..65535)")
    st.add_argument("--name", help="name; devices of the class publish it as `kind`")
    st.add_argument("--max-speed", type=int, help="max speed in km/h (0 = stationary)")
    st.add_argument("--res", type=int, help="H3 resolution of its readings' cells (0..15)")
    st.add_argument("--disable", action="store_true", help="disable the class (no new registrations)")
    st.set_defaults(
        func=chain_command(lambda a, s: hw_set(s, a.class_id, a.name, a.max_speed, a.res, a.disable))
    )


async def hw_list(settings: ChainSettings) -> int:
    async with open_chain(settings, signing=False) as chain:
        classes = await fetch_hw_classes(chain)
    print(f"{'id':>5}  {'name':<12} {'max km/h':>8}  {'res':>3}  {'kind':<10} status")
    for c in sorted(classes.values(), key=lambda c: c.id):
        kind = "mobile" if is_mobile(c) else "stationary"
        status = "enabled" if c.enabled else "disabled"
        print(f"{c.id:>5}  {c.name:<12} {c.max_speed_kmh:>8}  {c.h3_res:>3}  {kind:<10} {status}")
    return 0


async def hw_set(
    settings: ChainSettings,
    class_id: int,
    name: str | None,
    max_speed: int | None,
    res: int | None,
    disable: bool,
) -> int:
    """Add or change a class. For an existing class, omitted fields keep their values; a new class needs
    them all. The class is enabled unless --disable is given."""
    if not 0 <= class_id <= 0xFFFF:
        raise InputError("hardware class id must be 0..65535")
    if max_speed is not None and not 0 <= max_speed <= 0xFFFFFFFF:
        raise InputError("--max-speed must be 0..4294967295 km/h (0 = stationary)")
    if res is not None and not 0 <= res <= 15:
        raise InputError("--res must be an H3 resolution 0..15")
    if name is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
        # devices send the name as their packets' `kind`, compared exactly: keep it plain
        raise InputError(f"--name {name!r}: use 1..32 of a-z, 0-9, '-', '_' (it is the packets' `kind`)")
    async with open_chain(settings, signing=True) as chain:
        current = await chain.registry.get_hw_class(class_id)
        if current is None:
            if name is None or max_speed is None or res is None:
                raise InputError(f"hardware class {class_id} is new: give --name, --max-speed and --res")
            current = HwClassInfo(class_id, name, max_speed, res, True)
        info = replace(
            current,
            name=current.name if name is None else name,
            max_speed_kmh=current.max_speed_kmh if max_speed is None else max_speed,
            h3_res=current.h3_res if res is None else res,
            enabled=not disable,
        )
        receipt = await chain.registry.set_hw_class(
            info.id, info.name, info.max_speed_kmh, info.h3_res, info.enabled
        )
    kind = "mobile" if is_mobile(info) else "stationary"
    state = "enabled" if info.enabled else "disabled"
    speed = f"max {info.max_speed_kmh} km/h"
    print(f"hardware class {info.id}: {info.name}, {kind}, {speed}, res {info.h3_res}, {state}")
    print(tx_line(receipt))
    return 0
