"""Operator input checks (devices/inputs.py), connection settings (devices/settings.py) and the batch
progress output: pure, no chain."""

from __future__ import annotations

import io
from pathlib import Path

import h3
import pytest

from devices.cli.batch import ProgressBar
from devices.errors import InputError, SettingsError
from devices.inputs import (
    FLEET_COLUMNS,
    check_cell_for_class,
    parse_address,
    parse_cell,
    parse_device_id,
    parse_fleet_csv,
    parse_hw_class,
    parse_pubkey,
)
from devices.protocol.registry_fold import HwClassInfo
from devices.settings import DEFAULT_DEPLOYMENT_FILE, DEFAULT_RPC_URL, ChainSettings

CLASSES = {
    1: HwClassInfo(1, "dashcam", 200, 9, True),
    2: HwClassInfo(2, "weather", 0, 7, True),
    5: HwClassInfo(5, "retired", 0, 8, False),
}
OWNER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
CELL = h3.latlng_to_cell(52.52, 13.40, 7)
HEADER = ",".join(FLEET_COLUMNS)
# anvil's first dev key: public, safe to write in a test
DEV_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def hex32(n: int) -> str:
    return f"{n:064x}"


def line(n: int, *, cls: str = "dashcam", cell: str = "", owner: str = OWNER) -> str:
    return f"{hex32(n)},{hex32(1000 + n)},{owner},{cls},{cell}"


# ----------------------------------------------------------------------------------------- single fields


def test_device_id_and_pubkey() -> None:
    assert parse_device_id("0x" + "ab" * 32) == bytes.fromhex("ab" * 32)
    assert parse_device_id(" " + "AB" * 32 + " ") == bytes.fromhex("ab" * 32)
    with pytest.raises(InputError, match="not hex"):
        parse_device_id("zz" * 32)
    with pytest.raises(InputError, match=r"32 bytes .* got 2"):
        parse_device_id("abcd")
    with pytest.raises(InputError, match="all zeros"):
        parse_pubkey("00" * 32)


def test_address_checksum_rules() -> None:
    assert parse_address(OWNER.lower()) == OWNER
    assert parse_address(OWNER) == OWNER
    with pytest.raises(InputError, match="bad EIP-55 checksum"):
        parse_address(OWNER.replace("C518", "c518"))
    with pytest.raises(InputError, match="not an address"):
        parse_address("0x1234")
    with pytest.raises(InputError, match="zero address"):
        parse_address("0x" + "0" * 40)


def test_cell_and_class_rules() -> None:
    assert parse_cell(CELL) == h3.str_to_int(CELL)
    assert parse_cell("0x" + CELL.upper()) == h3.str_to_int(CELL)
    with pytest.raises(InputError, match="not a valid H3 cell"):
        parse_cell("8728308280fffff")
    assert parse_hw_class("dashcam", CLASSES).id == 1
    assert parse_hw_class(" DashCam ", CLASSES).id == 1
    assert parse_hw_class("2", CLASSES).name == "weather"
    with pytest.raises(InputError, match=r"unknown hardware class 'boat' \(enabled: dashcam=1, weather=2\)"):
        parse_hw_class("boat", CLASSES)
    with pytest.raises(InputError, match=r"retired .* is disabled"):
        parse_hw_class("retired", CLASSES)
    with pytest.raises(InputError, match="mobile class"):
        check_cell_for_class(CLASSES[1], parse_cell(CELL))
    with pytest.raises(InputError, match="stationary class: its asserted cell is required"):
        check_cell_for_class(CLASSES[2], 0)
    check_cell_for_class(CLASSES[2], parse_cell(CELL))


@pytest.mark.parametrize("res", [0, 3, 6, 8, 9, 15])
def test_a_stationary_cell_must_be_at_the_class_resolution(res: int) -> None:
    """A coarse cell (res 3 is ~69 km across) would switch off location trust for a whole region."""
    cell = h3.latlng_to_cell(52.52, 13.40, res)
    with pytest.raises(
        InputError, match=f"cell {cell} is resolution {res}, but weather cells are resolution 7"
    ):
        check_cell_for_class(CLASSES[2], parse_cell(cell))


# ----------------------------------------------------------------------------------------- fleet CSV


def test_fleet_csv_parses_rows_with_line_numbers() -> None:
    text = "\n".join([HEADER, line(1), "", line(2, cls="weather", cell=CELL), line(3, owner=OWNER.lower())])
    rows = parse_fleet_csv(text + "\n", CLASSES)
    assert [r.line for r in rows] == [2, 4, 5]
    assert rows[0].device_id == bytes.fromhex(hex32(1)) and rows[0].hw_class == 1
    assert rows[0].asserted_cell == 0
    assert rows[1].hw_class == 2 and rows[1].asserted_cell == h3.str_to_int(CELL)
    assert rows[2].owner == OWNER


def test_fleet_csv_from_a_spreadsheet_bom_and_crlf() -> None:
    text = "\ufeff" + HEADER + "\r\n" + line(1) + "\r\n" + line(2, cls="boat") + "\r\n"
    with pytest.raises(InputError, match=r"^line 3: unknown hardware class"):
        parse_fleet_csv(text, CLASSES)
    assert len(parse_fleet_csv("\ufeff" + HEADER + "\r\n" + line(1) + "\r\n", CLASSES)) == 1


def test_fleet_csv_columns_in_any_order() -> None:
    text = "owner,hw_class,device_id,pubkey,asserted_cell\n" + f"{OWNER},1,{hex32(7)},{hex32(8)},\n"
    (row,) = parse_fleet_csv(text, CLASSES)
    assert row.device_id == bytes.fromhex(hex32(7)) and row.pubkey == bytes.fromhex(hex32(8))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (line(2, cls="boat"), "line 3: unknown hardware class 'boat'"),
        ("zz" + line(2)[2:], "line 3: device id .* is not hex"),
        (f"{hex32(2)},{'00' * 32},{OWNER},dashcam,", "line 3: pubkey is all zeros"),
        (line(2, owner="0xnope"), "line 3: owner '0xnope' is not an address"),
        (line(2, cls="weather"), "line 3: weather is a stationary class"),
        (line(2, cell=CELL), "line 3: dashcam is a mobile class"),
        (line(2, cls="weather", cell="832830fffffffff"), "line 3: cell 832830fffffffff is resolution 3"),
        (hex32(2), "line 3: 1 fields, expected 5"),
        (line(1).replace(hex32(1001), hex32(1002)), "line 3: device id repeats line 2"),
        (line(2).replace(hex32(1002), hex32(1001)), "line 3: pubkey repeats line 2"),
    ],
)
def test_fleet_csv_bad_line_is_named(bad: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_fleet_csv("\n".join([HEADER, line(1), bad, line(3)]), CLASSES)


def test_fleet_csv_reports_first_errors_and_counts_the_rest() -> None:
    bad = [line(n, cls="boat") for n in range(1, 7)]
    with pytest.raises(InputError) as err:
        parse_fleet_csv("\n".join([HEADER, *bad]), CLASSES)
    assert str(err.value).startswith("line 2: ")
    assert "line 4: " in str(err.value) and "line 5: " not in str(err.value)
    assert str(err.value).endswith("and 3 more bad line(s)")


def test_fleet_csv_line_numbers_count_quoted_newlines() -> None:
    text = HEADER + "\n" + line(1)[:-1] + ',"x\ny"\n' + line(2, cls="boat") + "\n"
    with pytest.raises(InputError, match="line 4: unknown hardware class"):
        parse_fleet_csv(text, CLASSES)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        (HEADER + "\n", "no devices after the header"),
        ("device_id,pubkey\n" + hex32(1), "line 1: header must be"),
    ],
)
def test_fleet_csv_header_problems(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_fleet_csv(text, CLASSES)


# ----------------------------------------------------------------------------------------- settings


def test_settings_precedence(tmp_path: Path) -> None:
    env = {
        "DEPIN_CHAIN_RPC_URL": "http://rpc.example:8545",
        "DEPIN_DEPLOYMENT_FILE": "/etc/depin/deployment.json",
        "DEPIN_OPERATOR_KEY_FILE": "/etc/depin/operator.key",
        "DEPIN_OPERATOR_KEY": DEV_KEY,
    }
    s = ChainSettings.resolve(env=env)
    assert s.rpc_url == "http://rpc.example:8545"
    assert s.deployment_file == Path("/etc/depin/deployment.json")
    assert s.key_file == Path("/etc/depin/operator.key") and s.key_hex is None  # a file wins over the env key
    s = ChainSettings.resolve(
        rpc_url="http://other:1", deployment_file=tmp_path / "d.json", key_file=tmp_path / "k", env=env
    )
    assert (s.rpc_url, s.deployment_file, s.key_file) == (
        "http://other:1",
        tmp_path / "d.json",
        tmp_path / "k",
    )
    s = ChainSettings.resolve(env={})
    assert (s.rpc_url, s.deployment_file, s.key_file, s.key_hex) == (
        DEFAULT_RPC_URL,
        DEFAULT_DEPLOYMENT_FILE,
        None,
        None,
    )


def test_settings_key_sources(tmp_path: Path) -> None:
    assert ChainSettings.resolve(env={"DEPIN_OPERATOR_KEY": DEV_KEY}).account().address == DEV_ADDRESS
    key_file = tmp_path / "operator.key"
    key_file.write_text("0x" + DEV_KEY + "\n")
    assert ChainSettings.resolve(key_file=key_file, env={}).account().address == DEV_ADDRESS
    with pytest.raises(SettingsError, match="no signer key"):
        ChainSettings.resolve(env={}).account()
    with pytest.raises(SettingsError, match="cannot read key file"):
        ChainSettings.resolve(key_file=tmp_path / "missing", env={}).account()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        ChainSettings.resolve(key_file=tmp_path / "empty", env={}).account()
    secret = "11" * 31  # 31 bytes: not a key; the message must not echo it
    with pytest.raises(SettingsError, match="DEPIN_OPERATOR_KEY does not hold") as err:
        ChainSettings.resolve(env={"DEPIN_OPERATOR_KEY": secret}).account()
    assert secret not in str(err.value)


# ----------------------------------------------------------------------------------------- progress


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_off_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(chunks=2, devices=150, stream=out, width=10)
    bar.update(sent=1)
    bar.update(sent=2)
    bar.update(confirmed=1, devices=100)
    bar.update(confirmed=2, devices=50)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 4
    assert lines[-1] == "[##########] chunks sent 2/2 · confirmed 2/2 · devices 150/150"
    assert lines[2].startswith("[#####-----] ")


def test_progress_bar_redraws_on_a_terminal() -> None:
    out = FakeTty()
    bar = ProgressBar(chunks=4, devices=400, stream=out, width=8)
    bar.update(sent=4)
    bar.update(confirmed=2, devices=200)
    bar.close()
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("devices 200/400\n")
