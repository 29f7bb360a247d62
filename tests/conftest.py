"""Shared fixtures: real services (PostgreSQL, anvil, Mosquitto) started per test session."""

from tests.fixtures_chain import *  # noqa: F403
from tests.fixtures_mqtt import *  # noqa: F403
from tests.fixtures_pg import *  # noqa: F403
