"""deploy/ checked offline, without a container runtime or a cluster:

- deploy/depin.service and the split units of deploy/systemd/ by systemd itself (`systemd-analyze
  verify`): every directive parses, each restarts the service when it fails, runs as its own user, hardened;
- deploy/compose.yaml against the Compose Specification's JSON schema (vendored: deploy/schemas/);
- deploy/k8s/ against the Kubernetes OpenAPI schemas `kubernetes-validate` bundles;
- and what the schemas cannot see: every DEPIN_ name is a setting (tests/unit/test_settings_doc.py's
  lists), every command line parses with `depin`'s own parser, exactly one epoch worker, the probes and
  healthchecks ask /healthz and /readyz, the compose broker runs deploy/mosquitto.conf, the rewards key
  reaches the epoch worker only, as a 0600 file."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ingest.cli import build_parser
from ingest.dev.broker import DEPLOY_CONF
from ingest.service import PARTS
from tests.procs import REPO
from tests.unit import test_settings_doc as settings_doc

pytestmark = pytest.mark.integration

UNIT = REPO / "deploy" / "depin.service"
INSTALLED = "/opt/depin/.venv/bin/depin"


def verify(unit_text: str, tmp_path: Path) -> str:
    """`systemd-analyze verify` of the unit with ExecStart pointed at this checkout's `depin` (verify
    insists the binary exists); returns what it printed (nothing when the unit is clean)."""
    return verify_file(unit_text, tmp_path / "depin.service")


def verify_file(unit_text: str, path: Path) -> str:
    """`systemd-analyze verify` of `unit_text` written to `path` (ExecStart pointed at this checkout)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        why = "systemd-analyze is not installed (apt-get install systemd): the unit was not verified"
        if os.environ.get("CI"):  # in CI a missing tool fails the run rather than passing untested
            pytest.fail(why)
        pytest.skip(why)
    depin = Path(sys.executable).with_name("depin")
    assert depin.exists(), depin
    path.write_text(unit_text.replace(INSTALLED, str(depin)))
    proc = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 or out, "verify failed silently"
    return out if proc.returncode == 0 else out or f"exit {proc.returncode}"


def test_the_unit_verifies_clean(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} run\n" in text
    assert verify(text, tmp_path) == ""
    directives = {line.strip() for line in text.splitlines()}
    for expected in (
        "EnvironmentFile=/etc/depin/depin.env",
        "Restart=on-failure",
        "RestartSec=5",
        "User=depin",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=depin",
        "UMask=0077",
    ):
        assert expected in directives, expected


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check can fail: a typo in a directive and a bad value are reported."""
    text = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes")
    text = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    out = verify(text, tmp_path)
    assert "sometimes" in out and "NoNewPrivilege" in out, out


# --- the split units (deploy/systemd/) ------------------------------------------------------------------

SYSTEMD = REPO / "deploy" / "systemd"
SPLIT_UNITS = sorted(p.name for p in SYSTEMD.glob("depin-*.service"))
HARDENING = [
    line
    for line in UNIT.read_text().split("# Hardening", 1)[1].split("\n[Install]", 1)[0].splitlines()[1:]
    if line.strip()
]


def unit_argv(text: str) -> list[str]:
    """A unit's ExecStart as the argv `depin` gets (systemd splits it like a shell; no variables here)."""
    (line,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == INSTALLED, argv
    return argv[1:]


def test_the_split_units_are_the_ones_documented() -> None:
    assert SPLIT_UNITS == ["depin-api.service", "depin-epochs.service", "depin-ingest@.service"]
    assert (SYSTEMD / "depin.target").exists()


@pytest.mark.parametrize("name", SPLIT_UNITS)
def test_each_split_unit_verifies_clean(name: str, tmp_path: Path) -> None:
    text = (SYSTEMD / name).read_text()
    # A template is verified as an instance of itself (systemd-analyze needs a concrete name).
    instance = name.replace("@.", "@1.")
    analyze_dir = tmp_path / "units"
    analyze_dir.mkdir()
    (analyze_dir / "depin.target").write_text((SYSTEMD / "depin.target").read_text())
    assert verify_file(text, analyze_dir / instance) == ""
    directives = [line.strip() for line in text.splitlines()]
    for expected in (
        "EnvironmentFile=/etc/depin/depin.env",
        "Restart=on-failure",
        "User=depin",
        "StateDirectory=depin",
        "UMask=0077",
        "PartOf=depin.target",
        "WantedBy=depin.target",
    ):
        assert expected in directives, (name, expected)
    # Hardened exactly as deploy/depin.service.
    body = text.splitlines()
    start = body.index(HARDENING[0])
    assert body[start : start + len(HARDENING)] == HARDENING, name


@pytest.mark.parametrize("name", SPLIT_UNITS)
def test_each_split_unit_runs_a_valid_depin_command(name: str) -> None:
    parts = run_parts(unit_argv((SYSTEMD / name).read_text()))
    expected = {
        "depin-ingest@.service": {"consume", "api"},
        "depin-api.service": {"api"},
        "depin-epochs.service": {"epochs", "api"},
    }[name]
    assert parts == expected, (name, parts)


def test_the_role_files_the_units_read_hold_settings_only() -> None:
    """The unit headers write /etc/depin/ingest-N.env and epochs.env: every name there is a setting, and
    a role file comes after the shared one (so its values win)."""
    for name in SPLIT_UNITS:
        text = (SYSTEMD / name).read_text()
        unknown = set(settings_doc.NAME.findall(text)) - settings_doc.settings_names()
        assert not unknown, (name, unknown)
        files = [line for line in text.splitlines() if line.startswith("EnvironmentFile=")]
        assert files[0] == "EnvironmentFile=/etc/depin/depin.env", name
    ingest = (SYSTEMD / "depin-ingest@.service").read_text()
    for setting in (
        "DEPIN_MQTT_USERNAME",
        "DEPIN_MQTT_CLIENT_ID",
        "DEPIN_MQTT_PASSWORD_FILE",
        "DEPIN_API_PORT",
    ):
        assert f"{setting}=" in ingest, setting
    assert "DEPIN_REWARDS_KEY_FILE=" in (SYSTEMD / "depin-epochs.service").read_text()


def env_file_values(text: str) -> dict[str, str]:
    """An EnvironmentFile's assignments as systemd reads them (KEY=VALUE lines; '#' lines are comments)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def unit_environment(unit_text: str, files: dict[str, str]) -> dict[str, str]:
    """The environment systemd gives a unit's process: its Environment= lines, then every
    EnvironmentFile= in order on top of them, whatever the order of the lines (systemd.exec(5): "Settings
    from these files override settings made with Environment="). `files` maps a path to its text."""
    env: dict[str, str] = {}
    lines = [line.strip() for line in unit_text.splitlines()]
    for line in lines:
        if line.startswith("Environment="):
            key, value = line.removeprefix("Environment=").split("=", 1)
            env[key] = value
    for line in lines:
        if line.startswith("EnvironmentFile="):
            env.update(env_file_values(files[line.removeprefix("EnvironmentFile=").lstrip("-")]))
    return env


@pytest.mark.parametrize("name", ["depin.service", *SPLIT_UNITS])
def test_the_data_dir_is_the_units_state_directory(name: str) -> None:
    """With /etc/depin/depin.env copied from deploy/depin.env.example (and the role files the headers
    write), DEPIN_DATA_DIR is the unit's StateDirectory, the one path ProtectSystem=strict leaves writable
    and kept: the example no longer sets it (its /var/tmp/depin used to win and land in PrivateTmp's
    /var/tmp, deleted at every stop). An operator's own value in the env file wins (README there)."""
    text = (UNIT if name == "depin.service" else SYSTEMD / name).read_text()
    example = (REPO / "deploy" / "depin.env.example").read_text()
    assert "DEPIN_DATA_DIR" not in env_file_values(example)
    files = {
        "/etc/depin/depin.env": example,
        "/etc/depin/epochs.env": "DEPIN_REWARDS_KEY_FILE=/etc/depin/rewards.key\nDEPIN_API_PORT=9100\n",
        "/etc/depin/ingest-%i.env": "DEPIN_MQTT_USERNAME=depin-ingest-1\nDEPIN_API_PORT=9101\n",
    }
    assert "DEPIN_DATA_DIR" not in text.split("[Unit]", 1)[0]  # the role files the header writes
    (state,) = [line for line in text.splitlines() if line.startswith("StateDirectory=")]
    assert unit_environment(text, files)["DEPIN_DATA_DIR"] == "/var/lib/" + state.split("=", 1)[1]
    # The rule the README states: a value in the env file is the one the service gets.
    files["/etc/depin/depin.env"] = example + "\nDEPIN_DATA_DIR=/srv/depin\n"
    assert unit_environment(text, files)["DEPIN_DATA_DIR"] == "/srv/depin"


# --- command lines, parsed by `depin`'s own parser --------------------------------------------------------


def parse_depin(argv: list[str]) -> argparse.Namespace:
    """`argv` (after `depin`) through the real CLI parser; a bad option or command fails the test."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`depin {shlex.join(argv)}` is not a valid depin command line (exit {exc.code})")


def run_parts(argv: list[str]) -> set[str]:
    """The parts a `depin run` command line runs (all of them without --parts), checked like `depin run`."""
    args = parse_depin(argv)
    assert args.command == "run", argv
    parts = set(args.parts.split(",")) if args.parts else set(PARTS)
    assert parts <= set(PARTS), f"unknown part(s) {parts - set(PARTS)} in {argv}"
    return parts


# --- compose (deploy/compose.yaml) -------------------------------------------------------------------------

COMPOSE = REPO / "deploy" / "compose.yaml"
COMPOSE_SCHEMA = REPO / "deploy" / "schemas" / "compose-spec.json"
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def compose() -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load(COMPOSE.read_text()))


def compose_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_follows_the_compose_spec() -> None:
    assert compose_errors(compose()) == []


def test_the_compose_check_can_fail() -> None:
    doc = compose()
    doc["services"]["api"]["helthcheck"] = doc["services"]["api"].pop("healthcheck")
    doc["services"]["epochs"]["deploy"]["replicas"] = [1]
    errors = compose_errors(doc)
    assert any("helthcheck" in e for e in errors), errors
    assert any("replicas" in e for e in errors), errors


def depin_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the depin image's `depin run`."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("build", {}).get("target") == "depin" and name not in ("init", "simulator", "attacker")
    }


def compose_argv(svc: dict[str, Any]) -> list[str]:
    """What `depin` is started with: the image's ENTRYPOINT ["depin"] + command, or the consumer's slot
    script, which execs its command."""
    entrypoint, command = svc.get("entrypoint"), svc["command"]
    if entrypoint is None:
        assert 'ENTRYPOINT ["depin"]' in DOCKERFILE.read_text()
        return list(command)
    assert entrypoint == ["/bin/sh", "/opt/depin/deploy/compose/consumer.sh"], entrypoint
    assert 'exec "$@"' in (REPO / "deploy" / "compose" / "consumer.sh").read_text()
    assert command[0] == "depin", command
    return list(command[1:])


def test_compose_runs_n_consumers_an_api_and_one_epoch_worker() -> None:
    roles = {name: run_parts(compose_argv(svc)) for name, svc in depin_services().items()}
    assert roles == {
        "consumer": {"consume", "api"},
        "api": {"api"},
        "epochs": {"epochs", "api"},
    }, roles
    services = depin_services()
    with_epochs = [name for name, parts in roles.items() if "epochs" in parts]
    assert with_epochs == ["epochs"]
    assert services["epochs"]["deploy"]["replicas"] == 1
    assert "${CONSUMERS" in str(services["consumer"]["deploy"]["replicas"])  # scalable


def test_compose_healthchecks_ask_readyz() -> None:
    for name, svc in depin_services().items():
        test = " ".join(svc["healthcheck"]["test"])
        assert "http://127.0.0.1:8080/readyz" in test, name
        env = svc["environment"]
        assert env["DEPIN_API_PORT"] == "8080" and env["DEPIN_API_HOST"] == "0.0.0.0", name


def test_compose_publishes_on_loopback_only() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def compose_names() -> set[str]:
    texts = [COMPOSE.read_text()] + [p.read_text() for p in (REPO / "deploy" / "compose").glob("*.sh")]
    return {name for text in texts for name in settings_doc.NAME.findall(text)}


def test_compose_sets_only_real_settings() -> None:
    # The init job runs operator commands: their key setting (docs/OPERATORS.md) is allowed there.
    known = settings_doc.settings_names() | settings_doc.SERVICE_EXTRA | settings_doc.OPERATOR_ONLY
    assert compose_names() - known == set()
    for svc in compose()["services"].values():
        for name in svc.get("environment", {}):
            if name.startswith("DEPIN_"):
                assert name in known, name
    # The env file is the commented example by default.
    (env_file,) = compose()["services"]["api"]["env_file"]
    assert env_file["path"] == "${SETTINGS_FILE:-depin.env.example}"
    assert (COMPOSE.parent / "depin.env.example").exists()


def test_compose_builds_targets_the_dockerfile_has() -> None:
    text = DOCKERFILE.read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
            assert svc["build"]["target"] in stages, name
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        *sources, _dest = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    # The build context (the repository root) leaves out the virtualenvs and npm trees, and nothing copied.
    ignored = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for heavy in (
        ".venv",
        "contracts/node_modules",
        "ingest/api/web/node_modules",
        ".git",
        "deploy/depin.env",
    ):
        assert heavy in ignored, heavy
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        for source in line.split()[:-1]:
            assert not any(source == i or source.startswith(i + "/") for i in ignored), source


def init_commands() -> list[list[str]]:
    """Every `depin …` command line of deploy/compose/init.sh, its shell variables given sample values."""
    text = (REPO / "deploy" / "compose" / "init.sh").read_text().replace("\\\n", " ")
    values = {
        "S": "/state",
        "i": "1",
        "cred": "/state/devices/dev-1.json",
        "SIM_OWNER": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
    }
    commands = []
    for match in re.finditer(r"(?:^|[|&;]\s*|\|\|\s*)\s*depin ([^|;&>\n]+)", text, re.MULTILINE):
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], match.group(1))
        commands.append(shlex.split(line.replace("*", "1")))
    return commands


def test_compose_init_runs_valid_depin_commands() -> None:
    commands = init_commands()
    assert [c[:2] for c in commands] == [
        ["contracts", "deploy"],
        ["device", "new"],
        ["device", "register-batch"],
        ["broker", "dynsec"],
        ["broker", "dynsec"],
        ["broker", "dynsec"],
    ], commands
    for argv in commands:
        parse_depin(argv)


def test_compose_simulator_uses_the_simulate_command() -> None:
    svc = compose()["services"]["simulator"]
    assert svc["profiles"] == ["simulator"]
    sh, flag, script = svc["entrypoint"]
    assert (sh, flag) == ("/bin/sh", "-c") and script.startswith("exec depin simulate ")
    parse_depin(shlex.split(script.removeprefix("exec depin ").replace("*", "1")))


def test_compose_attacker_registers_with_live_logins_then_reconciles() -> None:
    svc = compose()["services"]["attacker"]
    assert svc["profiles"] == ["simulator"]
    sh, flag, script = svc["entrypoint"]
    simulate, reconcile = (shlex.split(step) for step in script.split("&&"))
    assert (sh, flag, simulate[0], reconcile[:2]) == ("/bin/sh", "-c", "depin", ["exec", "depin"])
    sim, rec = parse_depin(simulate[1:]), parse_depin(reconcile[2:])
    assert sim.register and sim.broker_admin_user == "depin-admin" and rec.ledger == sim.ledger
    init = (REPO / "deploy" / "compose" / "init.sh").read_text()
    # init.sh makes that admin, with that password file
    assert "--admin depin-admin" in init and f"$S/mqtt/{Path(sim.broker_admin_password_file).name}" in init
    env = svc["environment"]
    assert env["DEPIN_OPERATOR_KEY_FILE"].startswith("/state/") and "DEPIN_DATABASE_URL" in env


def test_compose_broker_runs_deploy_mosquitto_conf() -> None:
    """deploy/compose/mosquitto.conf is deploy/mosquitto.conf with only the listener's address and the
    dynamic security file's path changed (the file the tests run: tests/fixtures_mqtt.py)."""
    original = DEPLOY_CONF.read_text().splitlines()
    derived = (REPO / "deploy" / "compose" / "mosquitto.conf").read_text().splitlines()
    derived = derived[derived.index(original[0]) :]
    assert len(derived) == len(original)
    changed = {(a, b) for a, b in zip(original, derived, strict=True) if a != b}
    assert changed == {
        ("listener 1883 127.0.0.1", "listener 1883 0.0.0.0"),
        (
            "plugin_opt_config_file /etc/mosquitto/dynamic-security.json",
            "plugin_opt_config_file /state/broker/dynamic-security.json",
        ),
    }
    (mount,) = [v for v in compose()["services"]["broker"]["volumes"] if "mosquitto.conf" in v]
    assert mount == "./compose/mosquitto.conf:/etc/mosquitto/mosquitto.conf:ro"


# --- Kubernetes (deploy/k8s/) ------------------------------------------------------------------------------

K8S = REPO / "deploy" / "k8s"


def manifests(*, examples: bool = True) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml" or (not examples and path.name.endswith(".example.yaml")):
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def workloads() -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] in ("Deployment", "StatefulSet")
    }


def k8s_errors(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    """kubernetes-validate checks against the OpenAPI schemas it bundles (no cluster, no network); strict:
    a field the schema does not know is an error."""
    errors = {f"{name} {doc['kind']}/{doc['metadata']['name']}": k8s_errors(doc) for name, doc in manifests()}
    assert {k: v for k, v in errors.items() if v} == {}


def test_the_manifest_check_can_fail() -> None:
    doc = workloads()["depin-epochs"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = doc["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    assert "readinessProb" in (k8s_errors(doc) or "")


# Applied on purpose only, never by `kubectl apply -k`: the Secrets' template and the simulator Job.
NOT_IN_KUSTOMIZATION = ("kustomization.yaml", "secrets.example.yaml", "simulator.yaml")


def test_kustomization_lists_every_manifest_but_the_secret_template_and_the_simulator() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name not in NOT_IN_KUSTOMIZATION)


def jobs() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == "Job"}


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def depin_containers() -> dict[str, dict[str, Any]]:
    return {
        name: doc["spec"]["template"]["spec"]["containers"][0]
        for name, doc in workloads().items()
        if name.startswith("depin-")
    }


def test_k8s_roles_and_one_epoch_worker() -> None:
    roles = {name: run_parts(c["args"]) for name, c in depin_containers().items()}
    assert roles == {
        "depin-consumer": {"consume", "api"},
        "depin-api": {"api"},
        "depin-epochs": {"epochs", "api"},
    }
    assert [name for name, parts in roles.items() if "epochs" in parts] == ["depin-epochs"]
    epochs = workloads()["depin-epochs"]
    assert epochs["kind"] == "Deployment"
    assert epochs["spec"]["replicas"] == 1 and epochs["spec"]["strategy"] == {"type": "Recreate"}
    assert workloads()["depin-consumer"]["kind"] == "Deployment"


def test_k8s_probes_point_at_the_service_paths() -> None:
    (config,) = [
        doc for _, doc in manifests() if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "depin-env"
    ]
    port = int(config["data"]["DEPIN_API_PORT"])
    for name, c in depin_containers().items():
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": port}, name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz", name


def test_k8s_sets_only_real_settings() -> None:
    known = settings_doc.settings_names() | settings_doc.SERVICE_EXTRA
    names = set()
    for _, doc in manifests():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= {
                k for k in {**doc.get("data", {}), **doc.get("stringData", {})} if k.startswith("DEPIN_")
            }
    for c in [*depin_containers().values(), *(c for job in jobs().values() for c in pod_containers(job))]:
        names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("DEPIN_")}
    assert names and names - known == set()


def test_k8s_rewards_key_is_a_secret_copied_to_a_0600_file() -> None:
    pod = workloads()["depin-epochs"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    key_file = Path(env["DEPIN_REWARDS_KEY_FILE"])
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0600"] and init["command"][-1] == str(key_file)
    secret_mount = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    secret = volumes["rewards-key-secret"]["secret"]
    assert secret["secretName"] == "depin-rewards-key"
    assert init["command"][3] == f"{secret_mount['rewards-key-secret']}/rewards.key"
    # No other depin pod sees the key.
    for name, doc in {**workloads(), **jobs()}.items():
        if name != "depin-epochs":
            assert "depin-rewards-key" not in yaml.safe_dump(doc), name


def test_k8s_consumers_use_emqx_with_device_affinity() -> None:
    (emqx_config,) = [doc for _, doc in manifests() if doc["metadata"]["name"] == "emqx-config"]
    hocon = emqx_config["data"]["base.hocon"]
    assert re.search(r"shared_subscription_strategy = (hash_topic|hash_clientid)\b", hocon)
    assert "use_username_as_clientid = true" in hocon
    (config,) = [doc for _, doc in manifests() if doc["metadata"]["name"] == "depin-env"]
    assert config["data"]["DEPIN_MQTT_HOST"] == "emqx-internal"
    assert f'bind = "0.0.0.0:{config["data"]["DEPIN_MQTT_PORT"]}"' in hocon
    assert workloads()["emqx"]["spec"]["replicas"] >= 3
    acl = emqx_config["data"]["acl.conf"]
    assert "{deny, all}." in acl and "depin/v1/${username}/up" in acl


def test_k8s_every_file_setting_is_mounted() -> None:
    """A DEPIN_*_FILE a container gets (its ConfigMap and env) names a file on one of its mounts: `depin
    run` reads the MQTT password file at start whatever its parts, the rewards key and the deployment
    file where the parts need them (an API-only process loads no deployment)."""
    (config,) = [doc for _, doc in manifests() if doc["metadata"]["name"] == "depin-env"]
    for name, c in depin_containers().items():
        env = {**config["data"], **{e["name"]: e.get("value") for e in c.get("env", [])}}
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        parts = run_parts(c["args"])
        for setting, value in env.items():
            if not setting.endswith("_FILE"):
                continue
            if setting == "DEPIN_DEPLOYMENT_FILE" and parts == {"api"}:
                continue
            assert any(value.startswith(m.rstrip("/") + "/") for m in mounts), (name, setting, value)


# --- EMQX's logins: `depin broker emqx-users` writes what the authenticator checks -------------------------


def emqx_hocon() -> str:
    (emqx_config,) = [doc for _, doc in manifests() if doc["metadata"]["name"] == "emqx-config"]
    return cast(str, emqx_config["data"]["base.hocon"])


def hocon_fields(body: str) -> dict[str, str]:
    """`a = b` pairs of one HOCON object's body (separated by newlines or commas; no nesting)."""
    out = {}
    for pair in re.split(r"[,\n]", body):
        if pair.strip() and not pair.strip().startswith("#"):
            key, value = pair.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    return out


def emqx_authenticator(hocon: str) -> tuple[dict[str, str], dict[str, str]]:
    """The one authenticator of an EMQX config: its fields and its password_hash_algorithm."""
    (block,) = re.findall(r"^\s*authentication\s*=\s*\[\s*\{(.*?)\}\s*\]", hocon, re.MULTILINE | re.DOTALL)
    (algo,) = re.findall(r"password_hash_algorithm\s*\{([^{}]*)\}", block)
    rest = re.sub(r"password_hash_algorithm\s*\{[^{}]*\}", "", block)
    return hocon_fields(rest), hocon_fields(algo)


def configured_algorithm(algo: dict[str, str]) -> Any:
    from ingest import emqxauth

    return emqxauth.Algorithm(
        algo["name"],
        salt_position=algo.get("salt_position", "prefix"),  # EMQX's default position
        mac_fun=algo.get("mac_fun", "sha256"),
        iterations=int(algo.get("iterations", 0)),
        dk_length=int(algo["dk_length"]) if "dk_length" in algo else None,
    )


def test_the_authenticator_check_can_fail() -> None:
    from ingest import emqxauth

    hocon = emqx_hocon().replace("salt_position = suffix", "salt_position = prefix")
    assert configured_algorithm(emqx_authenticator(hocon)[1]) != emqxauth.DEFAULT_ALGORITHM
    hocon = emqx_hocon().replace("name = sha256,", "name = pbkdf2, mac_fun = sha512, iterations = 4096,")
    algo = configured_algorithm(emqx_authenticator(hocon)[1])
    assert algo == emqxauth.Algorithm("pbkdf2", "suffix", "sha512", 4096) != emqxauth.DEFAULT_ALGORITHM


def test_emqx_authenticator_matches_what_emqx_users_writes() -> None:
    """deploy/k8s/emqx.yaml's authenticator is the built-in database keyed by username, and hashes as
    `depin broker emqx-users` does by default: a file written with the defaults imports and verifies."""
    from ingest import emqxauth
    from ingest.brokerauth import Account

    fields, algo = emqx_authenticator(emqx_hocon())
    assert fields == {
        "mechanism": "password_based",
        "backend": "built_in_database",
        "user_id_type": "username",
    }
    configured = configured_algorithm(algo)
    assert configured == emqxauth.DEFAULT_ALGORITHM, (algo, emqxauth.DEFAULT_ALGORITHM)
    # The authenticator's id in the import URL is mechanism:backend.
    assert f"/authentication/{fields['mechanism']}%3A{fields['backend']}/import_users?type=hash" in (
        emqxauth.IMPORT_PATH
    )
    (line,) = emqxauth.import_document(emqxauth.DEFAULT_ALGORITHM, [Account("depin-ingest", "pw", False)])
    assert emqxauth.check_password(configured, "pw", line)
    # The README's import command names this path and the file the tool writes.
    readme = (K8S / "README.md").read_text()
    assert emqxauth.IMPORT_PATH in readme and "depin broker emqx-users" in readme


def test_emqx_acl_names_the_service_account_the_consumers_use() -> None:
    acl = yaml.safe_load((K8S / "emqx.yaml").read_text().split("\n---\n", 1)[0])["data"]["acl.conf"]
    env = {e["name"]: e.get("value") for e in depin_containers()["depin-consumer"]["env"]}
    assert f'{{username, "{env["DEPIN_MQTT_USERNAME"]}"}}' in acl


# --- the simulator Job (deploy/k8s/simulator.yaml, applied on its own) -------------------------------------


def simulator_commands() -> list[list[str]]:
    """The `depin …` command lines of the Job's shell script, in order (globs given one match)."""
    (container,) = pod_containers(jobs()["depin-simulator"])
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    steps = [s.strip() for s in script.split("&&")]
    out = []
    for step in steps:
        words = shlex.split(step.replace("*", "1"))
        if words[0] == "exec":
            words = words[1:]
        assert words[0] == "depin", step
        out.append(words[1:])
    return out


def test_k8s_simulator_job_runs_valid_depin_commands() -> None:
    simulate, reconcile = simulator_commands()
    sim, rec = parse_depin(simulate), parse_depin(reconcile)
    assert sim.command == "simulate" and sim.sim_command is None
    assert rec.command == "simulate" and rec.sim_command == "reconcile"
    assert rec.ledger == sim.ledger  # reconciles the ledger it just wrote
    # Only the registered devices of the Secret, each with its own login: generated devices have none.
    assert sim.no_fleet and sim.cred and not sim.register
    job = jobs()["depin-simulator"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cred_dir = str(Path(simulate[simulate.index("--cred") + 1]).parent)
    assert volumes[mounts[cred_dir]]["secret"]["secretName"] == "depin-sim-devices"
    ledger_dir = str(Path(sim.ledger).parent)
    assert "emptyDir" in volumes[mounts[ledger_dir]]  # writable under readOnlyRootFilesystem
    # The deployment file the chain settings name is mounted.
    (config,) = [doc for _, doc in manifests() if doc["metadata"]["name"] == "depin-env"]
    deployment = Path(config["data"]["DEPIN_DEPLOYMENT_FILE"])
    assert volumes[mounts[str(deployment.parent)]]["configMap"]["name"] == "depin-deployment"
    refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
    assert refs == {"depin-env", "depin-db"}  # chain settings and the database to reconcile against


def test_k8s_simulator_publishes_on_the_devices_listener() -> None:
    """Like a device: Service emqx on the port of the listener in zone `devices` (client id = username,
    the ACL's own topics), not the consumers' internal one."""
    (simulate, _) = simulator_commands()
    sim = parse_depin(simulate)
    (service,) = [d for _, d in manifests() if d["kind"] == "Service" and d["metadata"]["name"] == sim.host]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == sim.port]
    listeners = {
        name: hocon_fields(body)
        for name, body in re.findall(r"listeners\.tcp\.(\w+) \{([^}]*)\}", emqx_hocon())
    }
    (zone,) = [f["zone"] for f in listeners.values() if f["bind"].endswith(f":{sim.port}")]
    assert zone == "devices"
    emqx_ports = {p["name"]: p["containerPort"] for p in pod_containers(workloads()["emqx"])[0]["ports"]}
    assert emqx_ports[port["targetPort"]] == sim.port
    # The NetworkPolicy lets any pod reach that port.
    (policy,) = [d for _, d in manifests() if d["kind"] == "NetworkPolicy"]
    assert {"ports": [{"port": sim.port}]} in policy["spec"]["ingress"]
