"""The emission schedule as a setting (DEPIN_EMISSION_HALVING_EPOCHS): what scoring uses per epoch, and
how the deployment file records it (old files without it still load)."""

from __future__ import annotations

import json
from pathlib import Path

from devices.chain.deployment import Deployment, Schedule
from ingest.core.rewards import FixedEmission, HalvingEmission
from ingest.scoring import ScoringConfig
from ingest.settings import load_settings, read_environment

E = 1_000


def test_flat_by_default_and_halving_every_n_epochs_from_epoch_one() -> None:
    flat = ScoringConfig(genesis_ms=0, length_ms=1, emission=E)
    assert flat.emission_schedule() == FixedEmission(E)
    assert [flat.params(n).emission for n in (1, 2, 1000)] == [E, E, E]
    halving = ScoringConfig(genesis_ms=0, length_ms=1, emission=E, emission_halving_epochs=3)
    assert halving.emission_schedule() == HalvingEmission(E, 3)
    assert [halving.params(n).emission for n in range(1, 10)] == [E, E, E, 500, 500, 500, 250, 250, 250]
    assert halving.params().emission == E  # no epoch: the schedule's first (largest)
    assert max(halving.params(n).emission for n in range(1, 100)) == E  # never above the first


def test_the_setting_reaches_the_epochs_config() -> None:
    settings = load_settings(read_environment(emission_halving_epochs=365, chain_confirmations=12))
    assert settings.epochs.emission_halving_epochs == 365
    assert settings.epochs.confirmations == 12
    assert load_settings(read_environment()).epochs.emission_halving_epochs == 0


def test_the_deployment_file_records_the_schedule_and_old_files_still_load(tmp_path: Path) -> None:
    schedule = Schedule(genesis_ms=5, epoch_length_ms=60_000, epoch_emission=E, emission_halving_epochs=7)
    d = Deployment(
        31337, "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20, 4, "0x" + "44" * 20, schedule=schedule
    )
    d.save(tmp_path / "new.json")
    assert json.loads((tmp_path / "new.json").read_text())["schedule"]["emission_halving_epochs"] == 7
    assert Deployment.load(tmp_path / "new.json").schedule == schedule
    old = json.loads((tmp_path / "new.json").read_text())
    del old["schedule"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Deployment.load(tmp_path / "old.json")
    assert loaded.schedule is None and loaded.distributor == d.distributor
