"""Hardware classes follow the chain (anvil + PostgreSQL + Mosquitto): `depin hw set` adds or changes a
class, the registry follower folds its HwClassSet event, and the running consumer judges with it — a
new class's packets are accepted with its kind and cells at its resolution, a changed max speed or
resolution applies within a poll, a disabled class's devices keep being judged. Class changes are
persisted with the checkpoint, taken back by a reorg, rebuilt after a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h3
import pytest
from eth_account.signers.local import LocalAccount

from devices.chain.deployment import Deployment
from devices.chain.registry import RegistryClient
from devices.chain.signer import Signer
from devices.keys import DeviceIdentity, new_identity
from devices.protocol.hwclass import HwClass, cell_for
from devices.protocol.model import Reading
from devices.protocol.registry_fold import HwClassInfo
from devices.sdk import build_message
from ingest.cli import main
from ingest.core import rules
from ingest.service import Node
from simulator.publish import publish_raw
from tests.integration.test_registry import follower_on, mine, node, reorg, wait_for

pytestmark = pytest.mark.integration
__all__ = ["node"]  # the running node fixture of test_registry

BERLIN = (52.52, 13.40)


async def depin(tmp_path: Path, deployment: Deployment, key: LocalAccount, url: str, *args: str) -> None:
    """`depin …` as an operator runs it, in-process (each command runs its own event loop)."""
    dep, key_file = tmp_path / "deployment.json", tmp_path / "operator.key"
    if not dep.exists():
        deployment.save(dep)
        key_file.write_text(key.key.hex())
    conn = ("--rpc-url", url, "--deployment", str(dep), "--key-file", str(key_file))
    assert await asyncio.to_thread(main, [*args, *conn]) == 0


async def stored(node: Node, device_id: bytes, seq: int) -> list[tuple[int, int]]:
    """(cell, flags) of each stored reading of one packet."""
    rows = await node.store.pool.fetch(
        "SELECT cell, flags FROM readings WHERE device_id = $1 AND seq = $2 ORDER BY idx", device_id, seq
    )
    return [(r["cell"], r["flags"]) for r in rows]


async def send(
    node: Node, broker: Any, dev: DeviceIdentity, seq: int, kind: str, fixes: Sequence[tuple[float, float]]
) -> list[tuple[int, int]]:
    """Publish one packet (readings 60 s apart, ending now) and wait for its stored readings."""
    now = time.time_ns() // 1_000_000
    readings = [
        Reading(now - (len(fixes) - 1 - i) * 60_000, lat, lon, {}) for i, (lat, lon) in enumerate(fixes)
    ]
    await publish_raw(
        broker.host,
        broker.port,
        [(f"depin/v1/{dev.device_id.hex()}/up", build_message(dev, seq, kind, readings))],
    )
    out: list[tuple[int, int]] = []

    async def done() -> bool:
        nonlocal out
        out = await stored(node, dev.device_id, seq)
        rejected = await node.store.pool.fetchval(
            "SELECT reason FROM rejections WHERE device_id = $1 AND seq = $2", dev.device_id, seq
        )
        assert rejected is None, f"seq {seq} rejected: {rejected}"
        return bool(out)

    await wait_for(done, what=f"{kind} packet {seq} stored")
    return out


async def class_is(node: Node, class_id: int, expected: HwClass | None, started: float) -> float:
    await wait_for(
        lambda: _eq(node.mirror.classes.get(class_id), expected), what=f"class {class_id} in the mirror"
    )
    return time.monotonic() - started


async def _eq(a: Any, b: Any) -> bool:
    return bool(a == b)


async def test_new_and_changed_classes_are_followed_by_a_running_node(
    node: dict[str, Any],
    tmp_path: Path,
    anvil_url: str,
    deployment: Deployment,
    deployer: LocalAccount,
    accounts: list,
) -> None:
    running: Node = node["node"]
    broker = node["broker"]
    owner = accounts[2].address
    op = lambda *a: depin(tmp_path, deployment, deployer, anvil_url, *a)  # noqa: E731

    # A new stationary class (res 10) and a new mobile one (50 km/h), both unknown to DEFAULT_CLASSES.
    started = time.monotonic()
    await op("hw", "set", "7", "--name", "buoy", "--max-speed", "0", "--res", "10")
    await op("hw", "set", "8", "--name", "drone", "--max-speed", "50", "--res", "9")
    await class_is(running, 7, HwClass(7, "buoy", 10, 0, False), started)
    await class_is(running, 8, HwClass(8, "drone", 9, 50, True), started)
    assert {c.id: c for c in await running.store.load_hw_classes()}[7] == HwClassInfo(7, "buoy", 0, 10, True)

    buoy, drone = new_identity(), new_identity()
    buoy_cell = h3.latlng_to_cell(*BERLIN, 10)
    await op("device", "register", "--id", buoy.hex_id, "--pubkey", buoy.pubkey.hex(), "--owner", owner,
             "--class", "buoy", "--cell", buoy_cell)  # fmt: skip
    await op("device", "register", "--id", drone.hex_id, "--pubkey", drone.pubkey.hex(), "--owner", owner,
             "--class", "drone")  # fmt: skip
    await wait_for(lambda: _eq(buoy.device_id in running.mirror.devices, True), what="buoy in the mirror")

    # Accepted with its kind, its reading in a res-10 cell, trusted at its asserted cell.
    assert await send(running, broker, buoy, 1, "buoy", [BERLIN]) == [(h3.str_to_int(buoy_cell), 0)]
    # 1 km in a minute is 60 km/h: over the drone's 50.
    north = (BERLIN[0] + 1000 / 111_195, BERLIN[1])
    flags = [f for _, f in await send(running, broker, drone, 1, "drone", [BERLIN, north])]
    assert flags == [0, rules.FLAG_IMPLAUSIBLE_MOTION]

    # Changes apply within a poll (0.2 s): the drone's limit, the buoy's resolution.
    started = time.monotonic()
    await op("hw", "set", "8", "--max-speed", "100")
    took = await class_is(running, 8, HwClass(8, "drone", 9, 100, True), started)
    print(f"\nclass change effective {took:.2f}s after `hw set` started (poll 0.2 s)")
    back = (BERLIN[0] + 2000 / 111_195, BERLIN[1])
    assert [f for _, f in await send(running, broker, drone, 2, "drone", [north, back])] == [0, 0]
    await op("hw", "set", "7", "--res", "9")
    await class_is(running, 7, HwClass(7, "buoy", 9, 0, False), time.monotonic())
    # Its readings now go to res-9 cells, and its res-10 asserted cell is no longer its class's cell.
    assert await send(running, broker, buoy, 2, "buoy", [BERLIN]) == [
        (cell_for(*BERLIN, 9), rules.FLAG_OFF_LOCATION)
    ]

    # Disabled: no new registrations, but devices already registered keep being judged (README).
    await op("hw", "set", "8", "--disable")
    await wait_for(lambda: _eq(running.mirror.hw_classes[8].enabled, False), what="class 8 disabled")
    assert 8 in running.mirror.classes
    assert [f for _, f in await send(running, broker, drone, 3, "drone", [back, back])] == [0, 0]
    assert (await running.store.load_hw_classes())[-1] == HwClassInfo(8, "drone", 100, 9, False)


async def test_class_changes_are_taken_back_by_a_reorg_and_rebuilt_after_a_restart(
    store: Any, w3: Any, deployment: Deployment, signer: Signer
) -> None:
    registry = RegistryClient(w3, deployment, signer)
    follower = follower_on(w3, deployment, store)
    await follower.load()
    await follower.sync_once()
    assert sorted(follower.mirror.classes) == [1, 2, 3]  # the constructor's classes, from its events
    await registry.set_hw_class(9, "kite", 30, 8, True)
    await registry.set_hw_class(1, "dashcam", 150, 9, True)
    await follower.sync_once()
    assert follower.mirror.classes[9].max_speed_kmh == 30 and follower.mirror.classes[1].max_speed_kmh == 150

    # Both changes orphaned: undone from the checkpoints' undo records, in memory and in the database.
    await reorg(w3, signer, 2)
    await mine(w3, 1)
    await follower.sync_once()
    assert follower.reorgs == {"undo": 1, "rebuild": 0}
    assert 9 not in follower.mirror.classes and follower.mirror.classes[1].max_speed_kmh == 200
    assert {c.id: c.max_speed_kmh for c in await store.load_hw_classes()} == {1: 200, 2: 0, 3: 0}

    # Folded and persisted, then orphaned while no process holds its undo: a restart rebuilds.
    await registry.set_hw_class(9, "kite", 30, 8, True)
    await follower.sync_once()
    await reorg(w3, signer, 1)
    await mine(w3, 1)
    restarted = follower_on(w3, deployment, store)
    await restarted.load()
    assert 9 in restarted.mirror.classes  # the stale persisted table, until the first sync
    await restarted.sync_once()
    assert restarted.reorgs == {"undo": 0, "rebuild": 1}
    assert 9 not in restarted.mirror.classes
    assert [c.id for c in await store.load_hw_classes()] == [1, 2, 3]

    # A database written before classes were followed (no rows): the restart replays from deployment.
    await store.pool.execute("DELETE FROM hw_classes")
    upgraded = follower_on(w3, deployment, store)
    await upgraded.load()
    assert upgraded.mirror.block == deployment.block - 1
    await upgraded.sync_once()
    assert sorted(upgraded.mirror.classes) == [1, 2, 3]
    assert [c.id for c in await store.load_hw_classes()] == [1, 2, 3]
