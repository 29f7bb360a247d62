"""Settings: `Environment`, one field per environment variable DEPIN_<FIELD> (deploy/depin.env.example
lists them all), and `Settings`, the same values grouped per part of the service, built once at start
by `load_settings` and passed down (ingest/service.py hands each part its group).

Two shapes because pydantic-settings nests models only through a delimiter (a double underscore:
MQTT__HOST), which would rename every variable an operator has written; the environment stays flat and
one function groups it. That function is also where the files the settings name are read (the MQTT
password, the TLS certificates): a missing or unreadable one stops the start with one line naming the
setting, instead of a reconnect loop, and no part builds its configuration a second time from the flat
fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from eth_utils import to_checksum_address
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from devices.errors import SettingsError
from ingest.adapters.mqtt import MqttConfig, tls_context
from ingest.brokerauth import BrokerAuthError, read_password_file
from ingest.core.market import MarketParams
from ingest.core.readiness import ReadyRules
from ingest.core.rejection_budget import BudgetConfig
from ingest.core.rules import TimeLimits
from ingest.epochs import EpochConfig

TOKEN = 10**18  # RewardToken has 18 decimals
T = TypeVar("T")


class Environment(BaseSettings):
    """Every DEPIN_* setting as the operator writes it; read by `read_environment`, grouped by
    `load_settings`."""

    model_config = SettingsConfigDict(env_prefix="DEPIN_", extra="ignore")

    # Storage. No URL → an embedded PostgreSQL is started in data_dir/pg (the wheel, PG 18).
    database_url: str | None = None
    data_dir: Path = Path("/var/tmp/depin")

    # MQTT: the consumer joins a shared subscription so N workers split the load.
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_client_id: str = "depin-ingest-1"
    mqtt_group: str = "ingest"
    mqtt_shared: bool = True
    # Broker login (deploy/mosquitto.conf refuses anonymous clients): the service account that
    # `depin broker dynsec --user NAME --password-file FILE` created. The password from the environment
    # or, preferred, from a file (first line); not both.
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_password_file: Path | None = None
    # TLS to the broker. True = verify the broker against the system CAs; a CA file (a private CA) or a
    # client certificate turns TLS on by itself. Hostname checking stays on: the broker's certificate
    # must name DEPIN_MQTT_HOST. Unset = TLS only if a file below is given.
    mqtt_tls: bool | None = None
    mqtt_tls_ca_file: Path | None = None
    mqtt_tls_cert_file: Path | None = None  # client certificate (PEM), for brokers that require one
    mqtt_tls_key_file: Path | None = None  # its key, if not in the certificate file
    # MQTT 5 Receive Maximum: caps the unacknowledged messages the broker sends this process, i.e. what
    # it buffers while the database is slow (backpressure). Must be ≥ batch_max_size.
    mqtt_receive_maximum: int = 5000
    # Ack each message only after its batch is committed. False exists only for the regression test
    # that shows what auto-ack loses on a crash; never run production with it.
    mqtt_manual_ack: bool = True
    # Opt-in owner feedback: per-packet outcomes on depin/v1/{device_id_hex}/ack after each commit.
    ack_feedback: bool = False
    batch_max_size: int = Field(default=2000, ge=1, description="messages per commit; ≤ receive maximum")
    batch_max_wait_ms: int = Field(
        default=50, ge=1, description="longest a message waits for its batch to fill"
    )

    # Rejection rows (README "Rejection rows: budget and retention"): unsigned rejections get a row while
    # their topic's budget lasts (the rest are only counted); every row is deleted after the retention,
    # and each device keeps at most `rejections_unsigned_keep` unsigned rows.
    rejections_per_topic_per_min: float = Field(default=10.0, ge=0)
    rejections_per_topic_burst: float = Field(default=20.0, ge=1)
    rejections_per_worker_per_min: float = Field(default=6000.0, ge=1)
    rejections_retention_days: float = Field(default=7.0, gt=0)
    rejections_unsigned_keep: int = Field(default=50, ge=0)
    rejections_prune_interval_s: float = Field(default=60.0, gt=0)
    # Readings partitions (README "Storage"), kept by the same task: the next days' partitions are
    # created ahead; whole ones older than the retention (0 = forever) AND sealed are dropped.
    readings_partitions_ahead_days: int = Field(default=2, ge=0, le=366)
    readings_retention_days: int = Field(default=0, ge=0)
    # Days over for this many days get their partition's indexes rebuilt packed, once (0 = never).
    readings_compact_after_days: int = Field(default=1, ge=0, le=366)
    # The stateful rules' rows of devices silent this long are deleted (0 = kept forever): such a
    # device comes back as a new one (README "Storage").
    device_state_idle_days: float = Field(default=30.0, ge=0)

    # Wire limits (docs/DESIGN.md §3).
    max_message_bytes: int = 64 * 1024
    max_future_ms: int = 30_000
    max_lateness_ms: int = 2 * 86_400_000

    # Chain. The deployment file is written by `depin contracts deploy` (and by the demo).
    chain_rpc_url: str = "http://127.0.0.1:8545"
    deployment_file: Path = Path("deployment.json")
    # How deep a block must be to count as final: the registry is followed up to latest − N, the
    # distributor's events are mirrored up to latest − N, and a published epoch settles N blocks past its
    # receipt (still in the same block). 0 trusts the latest block (anvil, a chain with instant finality).
    chain_confirmations: int = Field(
        default=0, ge=0, description="blocks past a block before it counts as final (registry, settlement)"
    )
    registry_poll_s: float = 2.0
    # The `epochs` part mirrors the distributor's logs (payouts, deposits, bounties) this often.
    distributor_poll_s: float = Field(default=2.0, gt=0)
    # Every chain RPC request of the service ends after this long: a hung RPC counts as down.
    chain_rpc_timeout_s: float = Field(default=10.0, gt=0)
    # The key holding REWARDS_ROLE: exactly 64 hex digits (optional 0x). The file (preferred) must not
    # be readable by group or others; `depin run` refuses it otherwise.
    rewards_key: SecretStr | None = None
    rewards_key_file: Path | None = None

    # Readiness (`/readyz`, README "Readiness"): how long each fault may last before it is "failing".
    ready_mqtt_grace_s: float = Field(default=10.0, ge=0)
    ready_chain_stale_s: float = Field(default=30.0, gt=0)
    ready_epoch_overdue_s: float = Field(default=300.0, gt=0)

    # Epochs and rewards (docs/DESIGN.md §6).
    epoch_length_s: float = Field(default=86_400, gt=0)
    epoch_genesis_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z; epoch 1 starts here
    epoch_emission: int = 10_000 * TOKEN
    # The emission schedule: DEPIN_EPOCH_EMISSION for epochs 1..N, half of it for the next N, a quarter
    # after, …; 0 = the same every epoch. The contract caps every epoch at its epochEmission: `depin run`
    # refuses to start when the schedule's first (largest) epoch exceeds it.
    emission_halving_epochs: int = Field(default=0, ge=0)
    max_devices_per_cell: int = 10
    # Scoring (README "Rewards", ingest/scoring.py): readings beyond the cap add nothing; a cell pays
    # its whole share once its earners have this many quality-weighted clean readings; a cell that paid
    # in epoch n weighs 1/refill in n+1 and refills linearly; buyers' usage of the last D epochs raises a
    # cell's weight by units / demand_units, up to the cap; boosts count only if signed by one of these.
    reading_cap: int = Field(default=1000, ge=1)
    cell_readings_target: int = Field(default=10, ge=1)
    refill_epochs: int = Field(default=7, ge=1)
    demand_epochs: int = Field(default=7, ge=1)
    demand_units: int = Field(default=1000, ge=1)
    demand_cap_bps: int = Field(default=30_000, ge=10_000)
    boost_signers: str = ""  # comma list of operator addresses
    # Buyers' money (README "Rewards"): a usage unit costs a prepaid key (one with tokens deposited on
    # chain for it) this many token base units; this share (bps) of what each epoch charged goes to the
    # devices that collected the data used, the rest to the treasury address (empty: it stays in the
    # distributor, owed to nobody). Deposits and bounties are mirrored with the rest of the
    # distributor's logs, every distributor_poll_s.
    price_per_unit: int = Field(default=10**15, ge=0)
    revenue_share_bps: int = Field(default=7_000, ge=0, le=10_000)
    treasury_address: str = Field(default="", pattern=r"^(0x[0-9a-fA-F]{40})?$")
    # Wait this long after an epoch ends before sealing and closing it; later packets for it are refused
    # `epoch_closed` (README "Late readings").
    epoch_grace_s: float = Field(default=5.0, ge=0)
    # The epochs part also refreshes the hourly rollups behind /v1/aggregates this often (README "API").
    rollup_interval_s: float = Field(default=10.0, gt=0)

    # Database connections: one asyncpg pool per part, so the API can never take ingest's connections
    # (README "Running the service"). The consumer commits one batch at a time (plus partition upkeep);
    # the epoch scheduler holds one connection for its turn and uses another meanwhile.
    db_pool_ingest_size: int = Field(default=3, ge=2, description="consumer connections")
    db_pool_chain_size: int = Field(default=4, ge=2, description="registry follower + epochs connections")
    db_pool_api_size: int = Field(
        default=4, ge=1, description="API connections = API requests served at once (others wait)"
    )

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # Bind with SO_REUSEPORT so several `depin run --parts api` processes share api_port (the kernel
    # spreads connections). Off by default: a second process on a taken port should fail to bind, not join.
    api_reuse_port: bool = False
    api_max_rows: int = Field(default=1000, ge=1, le=100_000, description="largest page (limit)")
    # A page also ends once its readings' estimated JSON size passes this (next cursor set), so a
    # response holds at most about this many bytes whatever the readings carry.
    api_max_page_bytes: int = Field(default=2 * 1024 * 1024, ge=64 * 1024)
    # Every API statement is cancelled by PostgreSQL after this long: the request answers 504 JSON.
    api_statement_timeout_ms: int = Field(default=5000, ge=10)
    # A request waits at most this long for one of the db_pool_api_size slots: then 503 JSON.
    api_busy_timeout_s: float = Field(default=2.0, gt=0)
    # HMAC key that signs page cursors. Unset: a random key kept in the database (table api_secret),
    # shared by every API process on it and kept across restarts.
    api_cursor_secret: SecretStr | None = None
    # API keys (README "API access"): `required` = data endpoints need `Authorization: Bearer <key>`;
    # `off` = a request without a key is served (a key that is sent is still checked and metered).
    api_keys: Literal["required", "off"] = "required"
    # A key's rate limit unless it has its own (`depin api-key create --rate`): requests per second
    # and burst, per API process (N API processes give a key N × this).
    api_key_rate: float = Field(default=10.0, gt=0)
    api_key_burst: float = Field(default=20.0, ge=1)
    # Each API process caches a key lookup this long: a revoke takes effect within it.
    api_key_cache_s: float = Field(default=5.0, ge=0)
    # Origins that browsers may call the API from (comma list, `*` for any); empty = no CORS headers.
    api_cors_origins: str = ""
    # The coverage map at / (README "The coverage map"): a tile URL template ({z}/{x}/{y}) drawn under
    # the hexagons, and its attribution; empty: a plain background, the browser asks no tile server.
    map_tiles_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    map_tiles_attribution: str = Field(default="", max_length=500)

    @field_validator("rewards_key_file", "rewards_key", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("is set but empty: give a value or unset it")
        return value

    @model_validator(mode="after")
    def _mqtt_login_and_tls(self) -> Environment:
        if self.rewards_key is not None and self.rewards_key_file is not None:
            raise ValueError("set DEPIN_REWARDS_KEY or DEPIN_REWARDS_KEY_FILE, not both")
        if self.mqtt_password is not None and self.mqtt_password_file is not None:
            raise ValueError("set DEPIN_MQTT_PASSWORD or DEPIN_MQTT_PASSWORD_FILE, not both")
        if self.mqtt_username is None and (
            self.mqtt_password is not None or self.mqtt_password_file is not None
        ):
            raise ValueError("DEPIN_MQTT_PASSWORD(_FILE) is set but DEPIN_MQTT_USERNAME is not")
        if self.mqtt_tls_key_file is not None and self.mqtt_tls_cert_file is None:
            raise ValueError(
                "DEPIN_MQTT_TLS_KEY_FILE needs DEPIN_MQTT_TLS_CERT_FILE (the client certificate)"
            )
        files = self.mqtt_tls_ca_file or self.mqtt_tls_cert_file
        if self.mqtt_tls is False and files:
            raise ValueError("DEPIN_MQTT_TLS=false but a DEPIN_MQTT_TLS_*_FILE is set: remove one")
        idle_ms = self.device_state_idle_days * 86_400_000
        if 0 < idle_ms < self.max_lateness_ms:
            # A packet may arrive that late and is judged against the state (its seq's verdict, the
            # last fix before it): the state must outlive it.
            raise ValueError(
                "DEPIN_DEVICE_STATE_IDLE_DAYS must be 0 (keep forever) or at least DEPIN_MAX_LATENESS_MS "
                f"({self.max_lateness_ms / 86_400_000:g} days)"
            )
        return self


def read_environment(**values: Any) -> Environment:
    """DEPIN_* from the process environment (`values`, by field name, take precedence). A bad or
    contradictory value is a SettingsError, one line naming each variable, not pydantic's table."""
    try:
        return Environment(**values)
    except ValidationError as exc:
        problems = [
            (f"DEPIN_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise SettingsError("; ".join(problems)) from None


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str | None  # None: an embedded PostgreSQL in data_dir/pg
    data_dir: Path
    # One asyncpg pool per part (docs/DESIGN.md §1): these are their sizes.
    pool_ingest_size: int
    pool_chain_size: int
    pool_api_size: int


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """The consume part beyond its broker (`Settings.mqtt`): batching, wire limits, rejection rows."""

    batch_max_size: int
    batch_max_wait_s: float
    max_message_bytes: int
    time_limits: TimeLimits
    rejection_budget: BudgetConfig
    rejections_retention_ms: int
    rejections_unsigned_keep: int
    rejections_prune_interval_s: float
    readings_partitions_ahead_days: int
    readings_retention_days: int
    readings_compact_after_days: int
    device_state_idle_ms: int


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """The service's chain: RPC, deployment, registry following, the rewards key (read by
    ingest/rewards_key.py only when the epochs part runs)."""

    rpc_url: str
    rpc_timeout_s: float
    deployment_file: Path
    confirmations: int
    registry_poll_s: float
    distributor_poll_s: float
    rewards_key: SecretStr | None
    rewards_key_file: Path | None


@dataclass(frozen=True, slots=True)
class ApiConfig:
    host: str
    port: int
    max_rows: int
    max_page_bytes: int
    statement_timeout_ms: int
    busy_timeout_s: float
    cursor_secret: SecretStr | None  # None: the random key kept in the database (table api_secret)
    keys: str  # "required" or "off"
    key_rate: float
    key_burst: float
    key_cache_s: float
    cors_origins: tuple[str, ...]
    map_tiles_url: str = ""  # DEPIN_MAP_TILES_URL: empty = a plain background under the map
    map_tiles_attribution: str = ""
    reuse_port: bool = False  # DEPIN_API_REUSE_PORT: SO_REUSEPORT, N API processes on one port
    price_per_unit: int = 0  # DEPIN_PRICE_PER_UNIT: base units a usage unit costs a prepaid key


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's settings, one group per part; built by `load_settings`."""

    database: DatabaseConfig
    mqtt: MqttConfig
    consumer: ConsumerConfig
    chain: ChainConfig
    epochs: EpochConfig
    ready: ReadyRules
    api: ApiConfig


def load_settings(env: Environment | None = None, *, mqtt: MqttConfig | None = None) -> Settings:
    """The settings from `env` (default: `read_environment()`), grouped per part.

    `mqtt`: a broker configuration of the caller's own (the demo's broker, a test's); DEPIN_MQTT_* and
    their files are then not used. Every failure is a SettingsError naming the setting."""
    e = env if env is not None else read_environment()
    consumer = _group(
        ConsumerConfig,
        e,
        batch_max_wait_s=e.batch_max_wait_ms / 1000,
        time_limits=TimeLimits(e.max_future_ms, e.max_lateness_ms),
        rejection_budget=BudgetConfig(
            per_topic_per_min=e.rejections_per_topic_per_min,
            per_topic_burst=e.rejections_per_topic_burst,
            total_per_min=e.rejections_per_worker_per_min,
        ),
        rejections_retention_ms=int(e.rejections_retention_days * 86_400_000),
        device_state_idle_ms=int(e.device_state_idle_days * 86_400_000),
    )
    epochs = _group(
        EpochConfig,
        e,
        "epoch_",
        length_ms=int(e.epoch_length_s * 1000),
        grace_ms=int(e.epoch_grace_s * 1000),
        confirmations=e.chain_confirmations,
        boost_signers=tuple(a.strip() for a in e.boost_signers.split(",") if a.strip()),
        market=MarketParams(
            revenue_share_bps=e.revenue_share_bps,
            treasury=to_checksum_address(e.treasury_address) if e.treasury_address else "",
            reading_cap=e.reading_cap,
        ),
    )
    return Settings(
        database=_group(DatabaseConfig, e, "database_", "db_"),
        mqtt=mqtt if mqtt is not None else mqtt_config(e),
        consumer=consumer,
        chain=_group(ChainConfig, e, "chain_"),
        epochs=epochs,
        ready=_group(ReadyRules, e, "ready_"),
        api=_group(ApiConfig, e, "api_", cors_origins=cors_origins(e.api_cors_origins)),
    )


def cors_origins(raw: str) -> tuple[str, ...]:
    """DEPIN_API_CORS_ORIGINS: "https://a.example, https://b.example" → both; "" → none."""
    return tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def _group(cls: type[T], e: Environment, *prefixes: str, **values: Any) -> T:
    """`cls` from the environment: each field not in `values` takes the first of the variables
    <prefix><field> (in the order of `prefixes`) or <field> that is a setting, e.g. `ApiConfig.port`
    from DEPIN_API_PORT; a field with none keeps its default (and one without a default fails here,
    at start)."""
    for f in dataclasses.fields(cast(Any, cls)):
        if f.name in values:
            continue
        for name in (*(p + f.name for p in prefixes), f.name):
            if name in Environment.model_fields:
                values[f.name] = getattr(e, name)
                break
    return cls(**values)


def mqtt_config(e: Environment) -> MqttConfig:
    """The consumer's broker from DEPIN_MQTT_* and DEPIN_ACK_FEEDBACK: login, TLS, manual ack and
    feedback. Reads the password file and loads the TLS files now, not at every reconnect attempt."""
    password = None
    if e.mqtt_password is not None:
        password = e.mqtt_password.get_secret_value()
    elif e.mqtt_password_file is not None:
        try:
            password = read_password_file(e.mqtt_password_file)
        except BrokerAuthError as exc:
            raise SettingsError(f"DEPIN_MQTT_PASSWORD_FILE: {exc}") from None
    config = _group(
        MqttConfig,
        e,
        "mqtt_",
        password=password,
        tls=bool(e.mqtt_tls or e.mqtt_tls_ca_file or e.mqtt_tls_cert_file),
        tls_ca_file=_path(e.mqtt_tls_ca_file),
        tls_cert_file=_path(e.mqtt_tls_cert_file),
        tls_key_file=_path(e.mqtt_tls_key_file),
    )
    try:
        tls_context(config)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = "DEPIN_MQTT_TLS_CA_FILE / DEPIN_MQTT_TLS_CERT_FILE / DEPIN_MQTT_TLS_KEY_FILE"
        raise SettingsError(f"cannot load the MQTT TLS files ({files}): {exc}") from None
    return config


def _path(p: Path | None) -> str | None:
    return None if p is None else str(p)
