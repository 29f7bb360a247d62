"""The operator and owner CLI (`depin contracts|device|hw …`) against a real anvil.

Commands run in-process through `ingest.cli.main` (in a worker thread, since each runs its own event
loop), connected by the DEPIN_* environment variables an operator would set. Run with `-s` to see the
gas registerBatch costs per device.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h3
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3

from devices.chain.artifacts import GUARDIAN_ROLE, OPERATOR_ROLE, REWARDS_ROLE
from devices.chain.deployment import Deployment
from devices.chain.distributor import DistributorClient
from devices.chain.registry import RegistryClient
from devices.keys import load_identity, new_identity
from devices.protocol.model import DeviceRecord
from devices.protocol.registry_fold import apply_events
from ingest.cli import main

pytestmark = pytest.mark.integration

CELL = h3.latlng_to_cell(52.52, 13.40, 7)  # a res-7 cell, for "weather" (stationary) devices
CELL2 = h3.latlng_to_cell(48.85, 2.35, 7)
HEADER = "device_id,pubkey,owner,hw_class,asserted_cell"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    """`depin …` with the connection in the environment (DEPIN_CHAIN_RPC_URL, DEPIN_DEPLOYMENT_FILE,
    DEPIN_OPERATOR_KEY_FILE = the deployer, who holds OPERATOR_ROLE)."""

    capsys: pytest.CaptureFixture[str]
    dir: Path
    deployment: Deployment
    key_file: Callable[[LocalAccount], Path]

    async def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    async def ok(self, *args: str) -> str:
        r = await self(*args)
        assert r.code == 0, r.err
        return r.out

    async def fails(self, *args: str, match: str) -> str:
        """The command exits 1 with one error line on stderr matching `match`."""
        r = await self(*args)
        assert r.code == 1, (r.out, r.err)
        lines = r.err.strip().splitlines()
        assert len(lines) == 1, r.err
        assert re.search(match, lines[0]), lines[0]
        assert "Traceback" not in r.err
        return lines[0]


@pytest.fixture
def key_file(tmp_path: Path) -> Callable[[LocalAccount], Path]:
    def write(account: LocalAccount) -> Path:
        path = tmp_path / f"{account.address}.key"
        path.write_text(account.key.hex() + "\n")
        path.chmod(0o600)
        return path

    return write


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    anvil_url: str,
    deployment: Deployment,
    deployer: LocalAccount,
    key_file: Callable[[LocalAccount], Path],
) -> Cli:
    deployment_file = tmp_path / "deployment.json"
    deployment.save(deployment_file)
    monkeypatch.delenv("DEPIN_OPERATOR_KEY", raising=False)
    monkeypatch.setenv("DEPIN_CHAIN_RPC_URL", anvil_url)
    monkeypatch.setenv("DEPIN_DEPLOYMENT_FILE", str(deployment_file))
    monkeypatch.setenv("DEPIN_OPERATOR_KEY_FILE", str(key_file(deployer)))
    return Cli(capsys, tmp_path, deployment, key_file)


@pytest.fixture
def registry(w3: AsyncWeb3[Any], deployment: Deployment) -> RegistryClient:
    return RegistryClient(w3, deployment)  # read-only: the CLI does the writing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def new_device(cli: Cli, name: str) -> tuple[Path, str]:
    cred = cli.dir / f"{name}.json"
    await cli.ok("device", "new", "--out", str(cred))
    return cred, load_identity(cred).hex_id


async def on_chain(registry: RegistryClient, device_id_hex: str) -> DeviceRecord:
    rec = await registry.get_device(bytes.fromhex(device_id_hex))
    assert rec is not None
    return rec


async def chain_state(w3: AsyncWeb3[Any], account: LocalAccount) -> tuple[int, int]:
    return await w3.eth.block_number, await w3.eth.get_transaction_count(account.address)


# ------------------------------------------------------------------------------------------ deploy


async def test_contracts_deploy_writes_the_deployment_file(
    cli: Cli, w3: AsyncWeb3[Any], deployer: LocalAccount, accounts: list[LocalAccount]
) -> None:
    out_file = cli.dir / "fresh" / "deployment.json"
    out = await cli.ok(
        "contracts", "deploy", "--out", str(out_file), "--rewards-account", accounts[3].address
    )
    assert f"deployment written to {out_file}" in out
    dep = Deployment.load(out_file)
    assert dep.chain_id == await w3.eth.chain_id and dep.deployer == deployer.address
    assert dep.registry != cli.deployment.registry  # a new set of contracts
    for address in (dep.registry, dep.token, dep.distributor):
        assert await w3.eth.get_code(w3.to_checksum_address(address))
    assert dep.registry in out and dep.distributor in out
    registry = RegistryClient(w3, dep).contract
    assert await registry.functions.hasRole(OPERATOR_ROLE, deployer.address).call()
    # the new file is immediately usable by the other commands
    hw = await cli.ok("hw", "list", "--deployment", str(out_file))
    assert "dashcam" in hw


async def test_contracts_deploy_gives_rewards_role_to_a_new_key_not_the_deployer(
    cli: Cli, w3: AsyncWeb3[Any], deployer: LocalAccount
) -> None:
    """The publishing key is hot (it lives on the service host): by default it is a fresh key written
    beside the deployment file, never the deployer's admin key."""
    out_file = cli.dir / "own" / "deployment.json"
    out = await cli.ok(
        "contracts", "deploy", "--out", str(out_file), "--challenge-window-s", "60",
        "--emission-halving-epochs", "365",
    )  # fmt: skip
    schedule = Deployment.load(out_file).schedule  # recorded in the file
    assert schedule is not None and (schedule.challenge_window_s, schedule.emission_halving_epochs) == (
        60,
        365,
    )
    key_file = out_file.parent / "rewards.key"
    assert f"new rewards key written to {key_file}" in out
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    rewards = Account.from_key(key_file.read_text().strip()).address
    assert rewards in out
    dist = DistributorClient(w3, Deployment.load(out_file)).contract
    assert await dist.functions.hasRole(REWARDS_ROLE, rewards).call()
    assert not await dist.functions.hasRole(REWARDS_ROLE, deployer.address).call()
    assert await dist.functions.hasRole(GUARDIAN_ROLE, deployer.address).call()
    assert await dist.functions.challengeWindow().call() == 60
    assert await dist.functions.defaultAdminDelay().call() == 2 * 86_400
    # A second deploy beside it reuses the key (no second key to lose track of).
    again = await cli.ok("contracts", "deploy", "--out", str(out_file), "--force")
    assert "new rewards key" not in again and rewards in again


async def test_contracts_deploy_refuses_to_overwrite_without_force(
    cli: Cli, w3: AsyncWeb3[Any], deployer: LocalAccount
) -> None:
    existing = cli.dir / "deployment.json"  # the live deployment the other commands use
    before_text, before_chain = existing.read_text(), await chain_state(w3, deployer)
    await cli.fails(
        "contracts", "deploy", "--out", str(existing),
        match=f"^depin contracts deploy: error: {existing} exists: refusing to overwrite .* pass --force",
    )  # fmt: skip
    assert existing.read_text() == before_text
    assert await chain_state(w3, deployer) == before_chain  # checked before any transaction
    out = await cli.ok("contracts", "deploy", "--out", str(existing), "--force")
    assert f"deployment written to {existing}" in out
    assert Deployment.load(existing).registry != cli.deployment.registry


# ------------------------------------------------------------------------------------------ one device


async def test_new_register_show(
    cli: Cli, registry: RegistryClient, accounts: list[LocalAccount], monkeypatch: pytest.MonkeyPatch
) -> None:
    cred = cli.dir / "cam.json"
    out = await cli.ok("device", "new", "--out", str(cred))
    identity = load_identity(cred)
    seed = bytes(identity.signing_key).hex()
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert identity.hex_id in out and identity.pubkey.hex() in out
    assert seed not in out  # the secret stays in the file
    await cli.fails("device", "new", "--out", str(cred), match="exists: refusing to overwrite")
    shown = await cli.ok("device", "new", "--out", str(cli.dir / "other.json"), "--show-secret")
    assert bytes(load_identity(cli.dir / "other.json").signing_key).hex() in shown

    owner = accounts[1].address
    out = await cli.ok(
        "device", "register", "--cred", str(cred), "--owner", owner.lower(), "--class", "dashcam"
    )
    assert f"registered {identity.hex_id} (dashcam, owner {owner})" in out
    assert re.search(r"^tx 0x[0-9a-f]{64} block \d+ gas [\d,]+$", out, re.M)
    assert seed not in out

    rec = await registry.get_device(identity.device_id)
    assert rec is not None and rec.owner == owner and rec.pubkey == identity.pubkey and rec.hw_class == 1

    shown_json = json.loads(await cli.ok("device", "show", identity.hex_id))
    assert shown_json == {
        "device_id": identity.hex_id,
        "status": "active",
        "owner": owner,
        "pubkey": identity.pubkey.hex(),
        "hw_class": "dashcam (1)",
        "asserted_cell": None,
        "registered_block": rec.registered_block,
    }
    await cli.fails(
        "device", "register", "--cred", str(cred), "--owner", owner, "--class", "dashcam",
        match=f"device {identity.hex_id} is already registered",
    )  # fmt: skip

    # the signer key straight from DEPIN_OPERATOR_KEY, a stationary device by --id/--pubkey and class id
    monkeypatch.delenv("DEPIN_OPERATOR_KEY_FILE")
    monkeypatch.setenv("DEPIN_OPERATOR_KEY", "0x" + accounts[0].key.hex())
    station = new_identity()
    await cli.ok(
        "device", "register", "--id", station.hex_id, "--pubkey", station.pubkey.hex(),
        "--owner", owner, "--class", "2", "--cell", CELL,
    )  # fmt: skip
    assert json.loads(await cli.ok("device", "show", station.hex_id))["asserted_cell"] == CELL


# ------------------------------------------------------------------------------------------ fleet


def write_fleet(path: Path, n: int, owners: Sequence[str]) -> list[tuple[bytes, bytes, str, int, int]]:
    """n devices, alternately dashcams (mobile) and weather stations (stationary, with a cell)."""
    rows = []
    lines = [HEADER]
    for i in range(n):
        identity = new_identity()
        owner = owners[i % len(owners)]
        mobile = i % 2 == 0
        cls, cell = ("dashcam", "") if mobile else ("weather", CELL)
        lines.append(f"{identity.hex_id},{identity.pubkey.hex()},{owner},{cls},{cell}")
        rows.append(
            (
                identity.device_id,
                identity.pubkey,
                owner,
                1 if mobile else 2,
                0 if mobile else h3.str_to_int(CELL),
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return rows


async def test_register_batch_500_then_rerun_skips_all(
    cli: Cli,
    w3: AsyncWeb3[Any],
    registry: RegistryClient,
    deployer: LocalAccount,
    accounts: list[LocalAccount],
) -> None:
    owners = [accounts[1].address, accounts[2].address, accounts[3].address]
    fleet = cli.dir / "devices.csv"
    rows = write_fleet(fleet, 500, owners)
    start_block = await w3.eth.block_number

    r = await cli("device", "register-batch", str(fleet))
    assert r.code == 0, r.err
    assert "500 devices in file: 500 registered, 0 skipped" in r.out
    assert len(re.findall(r"^tx 0x", r.out, re.M)) == 5  # chunks of 100 by default
    # not a terminal: progress comes as lines, the last one complete
    progress = [ln for ln in r.err.splitlines() if "chunks sent" in ln]
    assert progress and "\r" not in r.err
    assert progress[-1].endswith("confirmed 5/5 · devices 500/500")
    gas = re.search(r"^gas ([\d,]+) in 5 tx \(([\d,]+) per new device\)$", r.out, re.M)
    assert gas, r.out
    with cli.capsys.disabled():  # shown by `pytest -s`
        print(f"\nregisterBatch: {gas[1]} gas for 500 devices in 5 tx = {gas[2]} gas per device")

    # every device is on chain as the file says (one eth_getLogs, folded like the service's mirror)
    mirror: dict[bytes, DeviceRecord] = {}
    apply_events(mirror, await registry.fetch_events(start_block + 1, await w3.eth.block_number))
    assert len(mirror) == 500
    for device_id, pubkey, owner, hw_class, cell in rows:
        rec = mirror[device_id]
        assert (rec.pubkey, rec.owner, rec.hw_class, rec.asserted_cell, rec.active) == (
            pubkey, owner, hw_class, cell, True,
        )  # fmt: skip
    for device_id, pubkey, owner, hw_class, _ in rows[::97]:  # and the contract's own view agrees
        rec = await on_chain(registry, device_id.hex())
        assert (rec.pubkey, rec.owner, rec.hw_class) == (pubkey, owner, hw_class)

    # the same file again: all skipped and reported, nothing sent
    before = await chain_state(w3, deployer)
    r = await cli("device", "register-batch", str(fleet))
    assert r.code == 0, r.err
    assert "500 devices in file: 0 registered, 500 skipped (already on chain), 0 failed" in r.out
    assert f"skip line 2: {rows[0][0].hex()} already registered (active)" in r.out
    assert "495 more already registered" in r.out
    assert "tx 0x" not in r.out and "chunks sent" not in r.err
    assert await chain_state(w3, deployer) == before

    # a grown file: only the new lines are sent
    more = cli.dir / "more.csv"
    extra = write_fleet(more, 3, owners)
    more.write_text(fleet.read_text() + "".join(more.read_text().splitlines(keepends=True)[1:]))
    out = await cli.ok("device", "register-batch", str(more), "--chunk-size", "2")
    assert "503 devices in file: 3 registered, 500 skipped" in out
    assert len(re.findall(r"^tx 0x", out, re.M)) == 2
    for device_id, *_ in extra:
        assert await registry.get_device(device_id) is not None


async def test_register_batch_rejects_a_bad_file_before_sending(
    cli: Cli, w3: AsyncWeb3[Any], deployer: LocalAccount, accounts: list[LocalAccount]
) -> None:
    fleet = cli.dir / "devices.csv"
    write_fleet(fleet, 6, [accounts[1].address])
    lines = fleet.read_text().splitlines()
    lines[3] = lines[3].replace(",dashcam,", ",hovercraft,")  # line 4
    before = await chain_state(w3, deployer)
    fleet.write_text("\n".join(lines) + "\n")
    await cli.fails(
        "device", "register-batch", str(fleet),
        match=r"devices.csv: line 4: unknown hardware class 'hovercraft' .*; nothing was sent$",
    )  # fmt: skip
    lines[3] = lines[3].replace(",hovercraft,", ",dashcam,")
    lines[5] = lines[5][:70]  # line 6: cut short
    fleet.write_text("\n".join(lines) + "\n")
    await cli.fails("device", "register-batch", str(fleet), match=r"line 6: (1|2) fields, expected 5")
    await cli.fails("device", "register-batch", str(cli.dir / "nope.csv"), match="cannot read .*nope.csv")
    assert await chain_state(w3, deployer) == before


# ------------------------------------------------------------------------------------------ lifecycle


async def test_lifecycle_rotate_transfer_set_location_revoke_list(
    cli: Cli, registry: RegistryClient, accounts: list[LocalAccount]
) -> None:
    alice, bob = accounts[1], accounts[2]
    cam, cam_id = await new_device(cli, "cam")
    station, station_id = await new_device(cli, "station")
    await cli.ok("device", "register", "--cred", str(cam), "--owner", alice.address, "--class", "dashcam")
    await cli.ok(
        "device", "register", "--cred", str(station), "--owner", alice.address,
        "--class", "weather", "--cell", CELL,
    )  # fmt: skip

    # set-location (operator): only for stationary devices
    out = await cli.ok("device", "set-location", station_id, "--cell", CELL2)
    assert f"set location of {station_id}: {CELL} → {CELL2}" in out
    assert (await on_chain(registry, station_id)).asserted_cell == h3.str_to_int(CELL2)
    await cli.fails(
        "device",
        "set-location",
        cam_id,
        "--cell",
        CELL2,
        match="dashcam \\(mobile\\): it has no asserted cell",
    )

    # rotate-key: from a new credential file for the same id, or a bare pubkey; by the owner too
    cam2 = cli.dir / "cam-v2.json"
    await cli.ok("device", "new", "--out", str(cam2), "--id", cam_id)
    new_key = load_identity(cam2).pubkey
    out = await cli.ok("device", "rotate-key", cam_id, "--cred", str(cam2))
    assert new_key.hex() in out
    assert (await on_chain(registry, cam_id)).pubkey == new_key
    await cli.fails("device", "rotate-key", cam_id, "--cred", str(station), match="is for device .*, not ")
    await cli.fails(
        "device", "rotate-key", cam_id, "--pubkey", new_key.hex(), match="already has this pubkey"
    )
    third = new_identity().pubkey
    await cli.ok(
        "device", "rotate-key", cam_id, "--pubkey", third.hex(), "--key-file", str(cli.key_file(alice))
    )
    assert (await on_chain(registry, cam_id)).pubkey == third

    # transfer: only the owner's key moves a device, not the operator's
    await cli.fails(
        "device", "transfer", cam_id, "--to", bob.address,
        match=f"is not the owner of device {cam_id}: sign with the owner's key",
    )  # fmt: skip
    out = await cli.ok(
        "device", "transfer", cam_id, "--to", bob.address, "--key-file", str(cli.key_file(alice))
    )
    assert f"owner {alice.address} → {bob.address}" in out

    # revoke (operator only; an owner cannot)
    await cli.fails(
        "device", "revoke", station_id, "--key-file", str(cli.key_file(alice)),
        match=f"{alice.address} does not hold OPERATOR_ROLE",
    )  # fmt: skip
    await cli.ok("device", "revoke", station_id)
    assert json.loads(await cli.ok("device", "show", station_id))["status"] == "revoked"
    await cli.fails("device", "revoke", station_id, match=f"device {station_id} is revoked")

    # list --owner, from the registry's events
    out = await cli.ok("device", "list", "--owner", alice.address)
    assert station_id in out and cam_id not in out
    assert f"1 device(s) owned by {alice.address} (0 active, 1 revoked)" in out
    listed = json.loads(await cli.ok("device", "list", "--owner", bob.address.lower(), "--json"))
    assert [(d["device_id"], d["owner"], d["pubkey"], d["status"], d["hw_class"]) for d in listed] == [
        (cam_id, bob.address, third.hex(), "active", "dashcam (1)")
    ]
    out = await cli.ok("device", "list")
    assert "2 device(s) (1 active, 1 revoked)" in out


async def test_a_cell_must_be_at_the_class_resolution(
    cli: Cli, w3: AsyncWeb3[Any], deployer: LocalAccount, accounts: list[LocalAccount]
) -> None:
    """A weather station asserting a res-3 cell (~69 km: it could claim anywhere in a region) is refused
    before anything is sent, by register, register-batch (naming the line) and set-location."""
    owner = accounts[1].address
    coarse = "832830fffffffff"
    station, station_id = await new_device(cli, "station")
    reg = ("device", "register", "--cred", str(station), "--owner", owner, "--class", "weather")
    before = await chain_state(w3, deployer)
    await cli.fails(
        *reg, "--cell", coarse,
        match=f"cell {coarse} is resolution 3, but weather cells are resolution 7: give the res-7 cell",
    )  # fmt: skip
    res9 = h3.latlng_to_cell(52.52, 13.40, 9)
    await cli.fails(*reg, "--cell", res9, match="is resolution 9, but weather cells are resolution 7")
    fleet = cli.dir / "devices.csv"
    write_fleet(fleet, 4, [owner])
    lines = fleet.read_text().splitlines()
    assert lines[1].endswith(",dashcam,")  # line 2: a mobile device, made a coarse station
    lines[1] = lines[1].replace(",dashcam,", ",weather,") + coarse
    fleet.write_text("\n".join(lines) + "\n")
    await cli.fails(
        "device", "register-batch", str(fleet),
        match=f"devices.csv: line 2: cell {coarse} is resolution 3, but weather cells are resolution 7",
    )  # fmt: skip
    assert await chain_state(w3, deployer) == before

    await cli.ok(*reg, "--cell", CELL)
    before = await chain_state(w3, deployer)
    await cli.fails(
        "device", "set-location", station_id, "--cell", coarse,
        match="is resolution 3, but weather cells are resolution 7",
    )  # fmt: skip
    assert await chain_state(w3, deployer) == before


# ------------------------------------------------------------------------------------------ hardware


async def test_hw_set_and_list(cli: Cli, accounts: list[LocalAccount]) -> None:
    out = await cli.ok("hw", "list")
    assert re.search(r"^\s+1\s+dashcam\s+200\s+9\s+mobile\s+enabled$", out, re.M)
    assert re.search(r"^\s+2\s+weather\s+0\s+7\s+stationary\s+enabled$", out, re.M)

    await cli.fails(
        "hw", "set", "7", "--name", "drone", match="class 7 is new: give --name, --max-speed and --res"
    )
    await cli.fails("hw", "set", "7", "--name", "Big Drone", match="use 1..32 of a-z, 0-9")
    out = await cli.ok("hw", "set", "7", "--name", "drone", "--max-speed", "120", "--res", "10")
    assert "hardware class 7: drone, mobile, max 120 km/h, res 10, enabled" in out
    assert re.search(r"^\s+7\s+drone\s+120\s+10\s+mobile\s+enabled$", await cli.ok("hw", "list"), re.M)

    drone, _ = await new_device(cli, "drone")
    owner = accounts[1].address
    await cli.ok("hw", "set", "7", "--disable")
    assert re.search(r"^\s+7\s+drone\s+120\s+10\s+mobile\s+disabled$", await cli.ok("hw", "list"), re.M)
    await cli.fails(
        "device", "register", "--cred", str(drone), "--owner", owner, "--class", "7",
        match=r"hardware class drone \(7\) is disabled",
    )  # fmt: skip
    await cli.ok("hw", "set", "7", "--res", "11")  # omitted fields keep their values; enabled again
    assert re.search(r"^\s+7\s+drone\s+120\s+11\s+mobile\s+enabled$", await cli.ok("hw", "list"), re.M)
    await cli.ok("device", "register", "--cred", str(drone), "--owner", owner, "--class", "7")

    await cli.fails(
        "hw", "set", "8", "--name", "x", "--max-speed", "0", "--res", "16", match="--res must be .* 0..15"
    )
    await cli.fails(
        "hw", "set", "8", "--name", "x", "--max-speed", "0", "--res", "8",
        "--key-file", str(cli.key_file(accounts[5])),
        match=f"{accounts[5].address} does not hold OPERATOR_ROLE",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ errors


async def test_errors_are_one_line_with_exit_1(
    cli: Cli,
    w3: AsyncWeb3[Any],
    deployer: LocalAccount,
    accounts: list[LocalAccount],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cred, device_id = await new_device(cli, "dev")
    owner = accounts[1].address
    register = ("device", "register", "--cred", str(cred), "--owner", owner, "--class", "dashcam")
    before = await chain_state(w3, deployer)

    # a stranger's key: the message names the missing role and who lacks it
    stranger = accounts[5]
    await cli.fails(
        *register, "--key-file", str(cli.key_file(stranger)),
        match=f"^depin device register: error: {stranger.address} does not hold OPERATOR_ROLE: "
        "this needs an operator's key",
    )  # fmt: skip
    fleet = cli.dir / "devices.csv"
    write_fleet(fleet, 3, [owner])
    await cli.fails(
        "device", "register-batch", str(fleet), "--key-file", str(cli.key_file(stranger)),
        match="does not hold OPERATOR_ROLE",
    )  # fmt: skip

    # a key file that is not a key, or no key at all
    junk = cli.dir / "junk.key"
    junk.write_text("not-a-key\n")
    await cli.fails(
        *register, "--key-file", str(junk), match=f"key file {junk} does not hold a 32-byte hex private key"
    )
    await cli.fails(*register, "--key-file", str(cli.dir / "missing.key"), match="cannot read key file")
    poor = cli.dir / "poor.key"  # a valid key of an account with no ETH
    poor.write_text("0x" + "5a" * 32)
    await cli.fails("contracts", "deploy", "--key-file", str(poor), match="has too little ETH to pay for gas")
    monkeypatch.delenv("DEPIN_OPERATOR_KEY_FILE")
    await cli.fails(*register, match="no signer key: pass --key-file FILE or set DEPIN_OPERATOR_KEY_FILE")
    monkeypatch.setenv("DEPIN_OPERATOR_KEY", "0x" + "12" * 31)
    await cli.fails(
        *register, match="^depin device register: error: DEPIN_OPERATOR_KEY does not hold a 32-byte"
    )
    monkeypatch.delenv("DEPIN_OPERATOR_KEY")  # back to the operator's key file
    monkeypatch.setenv("DEPIN_OPERATOR_KEY_FILE", str(cli.key_file(deployer)))

    # an RPC that is down
    down = f"http://127.0.0.1:{free_port()}"
    await cli.fails(*register, "--rpc-url", down, match=f"no JSON-RPC node answers at {down}")
    await cli.fails("device", "show", device_id, "--rpc-url", down, match="no JSON-RPC node answers")
    await cli.fails(
        "contracts", "deploy", "--rpc-url", down, "--out", str(cli.dir / "x.json"), match="no JSON-RPC"
    )

    # unknown hardware class; bad device id / pubkey / owner / cell
    await cli.fails(
        *register[:-1],
        "boat",
        match=r"unknown hardware class 'boat' \(enabled: dashcam=1, weather=2, air=3\)",
    )
    await cli.fails("device", "show", "abcd", match="device id must be 32 bytes .*, got 2")
    await cli.fails("device", "show", "zz" * 32, match="device id 'z+' is not hex")
    await cli.fails("device", "show", device_id, match=f"device {device_id} is not registered")
    base = ("device", "register", "--id", device_id, "--owner", owner, "--class", "dashcam")
    await cli.fails(*base, "--pubkey", "00" * 32, match="pubkey is all zeros")
    await cli.fails(*base, "--pubkey", "ab" * 31, match="pubkey must be 32 bytes")
    await cli.fails(*base, match="give --cred FILE, or both --id HEX and --pubkey HEX")
    await cli.fails(*register[:5], "0x1234", *register[6:], match="owner '0x1234' is not an address")
    await cli.fails(*register[:-1], "weather", match="stationary class: its asserted cell is required")
    await cli.fails(*register[:-1], "weather", "--cell", "8728308280fffff", match="not a valid H3 cell")

    # the deployment file: missing, or from another chain's contracts
    await cli.fails(
        *register, "--deployment", str(cli.dir / "none.json"), match="deployment file .* not found"
    )
    stale = cli.dir / "stale.json"
    Deployment(**{**cli.deployment.__dict__, "registry": "0x" + "12" * 20}).save(stale)
    await cli.fails(
        *register, "--deployment", stale.as_posix(), match="is stale \\(was the chain reset\\?\\)"
    )

    assert await chain_state(w3, deployer) == before  # none of it sent a transaction
