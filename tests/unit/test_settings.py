"""`load_settings`: every DEPIN_* variable reaches the grouped `Settings` (the groups are filled by
field name, ingest/settings.py `_group`, so a renamed field must not fall silently to its default),
and what goes wrong is one `SettingsError` line naming the variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import pytest

from devices.errors import SettingsError
from ingest.adapters.mqtt import MqttConfig
from ingest.settings import Environment, load_settings, read_environment


class Recording:
    """An Environment's stand-in that notes which of its fields were read."""

    def __init__(self, env: Environment) -> None:
        self.env, self.read = env, set[str]()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return getattr(self.env, name)


def test_every_variable_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DEPIN_")]:
        monkeypatch.delenv(name)  # the defaults: each branch that reads a variable is taken
    env = Recording(Environment())
    load_settings(cast(Environment, env))
    unread = set(Environment.model_fields) - env.read
    assert not unread, f"settings that load_settings never reads: {sorted(unread)}"


def test_groups_take_their_variables() -> None:
    s = load_settings(
        Environment(
            api_port=9,
            db_pool_api_size=7,
            chain_rpc_url="http://rpc",
            ready_chain_stale_s=3,
            epoch_length_s=60,
            batch_max_wait_ms=20,
            mqtt_client_id="w1",
            ack_feedback=True,
        )
    )
    assert (s.api.port, s.database.pool_api_size, s.chain.rpc_url) == (9, 7, "http://rpc")
    assert (s.ready.chain_stale_s, s.epochs.length_ms, s.consumer.batch_max_wait_s) == (3, 60_000, 0.02)
    assert (s.mqtt.client_id, s.mqtt.ack_feedback, s.mqtt.manual_ack) == ("w1", True, True)


def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPIN_API_PORT", "eighty")
    with pytest.raises(SettingsError, match=r"^DEPIN_API_PORT: Input should be a valid integer") as info:
        read_environment()
    assert "\n" not in str(info.value)


def test_a_broker_of_the_callers_own_reads_no_mqtt_files(tmp_path: Path) -> None:
    env = Environment(mqtt_username="u", mqtt_password_file=tmp_path / "absent")
    with pytest.raises(SettingsError, match=r"^DEPIN_MQTT_PASSWORD_FILE: cannot read"):
        load_settings(env)
    mine = MqttConfig(host="broker", port=1)
    assert load_settings(env, mqtt=mine).mqtt is mine


def test_device_state_must_outlive_the_latest_packet() -> None:
    """Pruning a device's state while a packet it judges may still arrive would judge that packet
    against a blank state: refused at start, naming both settings."""
    must = r"DEPIN_DEVICE_STATE_IDLE_DAYS must be 0 .* at least DEPIN_MAX_LATENESS_MS"
    with pytest.raises(SettingsError, match=must):
        read_environment(device_state_idle_days=1, max_lateness_ms=2 * 86_400_000)
    for days in (0, 3):
        consumer = load_settings(read_environment(device_state_idle_days=days)).consumer
        assert consumer.device_state_idle_ms == days * 86_400_000
