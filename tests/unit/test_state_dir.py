"""`depin run` warns when an embedded PostgreSQL would live outside the systemd unit's state directory
(deploy/systemd/README.md, "Data directory"): refused by ProtectSystem=strict, or wiped at every stop in
PrivateTmp's /tmp and /var/tmp."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.service import state_dir_warning


@pytest.mark.parametrize(
    "data_dir,state,warns",
    [
        ("/var/lib/depin", "/var/lib/depin", False),
        ("/var/lib/depin/sub", "/var/lib/depin", False),
        ("/var/lib/depin/../depin", "/var/lib/depin", False),
        ("/var/tmp/depin", "/var/lib/depin", True),  # the old example's value: lost at every stop
        ("/var/lib/depinx", "/var/lib/depin", True),
        ("/srv/depin", "/var/lib/depin:/srv/depin", False),  # several StateDirectory= entries
        ("/var/tmp/depin", "", False),  # not under a unit with StateDirectory=: no opinion
        ("/var/tmp/depin", None, False),
    ],
)
def test_state_dir_warning(data_dir: str, state: str | None, warns: bool) -> None:
    env = {} if state is None else {"STATE_DIRECTORY": state}
    line = state_dir_warning(Path(data_dir), env)
    assert (line is not None) == warns, line
    if line:
        assert line.startswith(f"DEPIN_DATA_DIR={data_dir} is outside the unit's state directory ({state})")
        assert "ReadWritePaths=" in line
