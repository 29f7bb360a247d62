"""`depin …` commands. Thin: parse, load settings, call the service; errors are one clear line + exit 1."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from devices.cli import add_commands as add_device_commands
from devices.errors import DepinError
from ingest.dev.simulate import add_commands as add_simulate_commands
from ingest.emqxauth import add_command as add_emqx_users_command
from ingest.keys_cli import add_commands as add_key_commands
from ingest.logs import FORMATS, configure
from ingest.score_cli import add_commands as add_score_commands

if TYPE_CHECKING:
    from ingest.brokerauth import AccountChanges


def _demo(args: argparse.Namespace) -> int:
    from devices.errors import DepinError
    from ingest.dev.demo import DemoOptions, run_demo

    opts = DemoOptions(
        devices=args.devices,
        epochs=args.epochs,
        epoch_seconds=args.epoch_seconds,
        exit=args.exit,
        summary=args.summary,
        seed=args.seed,
        api_port=args.api_port,
        data_dir=args.data_dir,
    )
    try:
        asyncio.run(run_demo(opts))
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C or SIGTERM: every part was stopped
        print("[demo] stopped", flush=True)
    except DepinError as exc:  # a part it needs is not installed, or would not start
        print(f"depin demo: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace) -> int:
    from ingest.service import PARTS, run
    from ingest.settings import load_settings

    parts = args.parts.split(",") if args.parts else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"depin run: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    asyncio.run(run(load_settings(), parts))
    return 0


def _broker(args: argparse.Namespace) -> int:
    from ingest import brokerauth

    if args.broker_command in ("dynsec", "passwd"):
        changes = brokerauth.AccountChanges(
            tuple(args.cred),
            args.user,
            args.password_file,
            args.rotate,
            tuple(args.remove),
            getattr(args, "admin", None),
        )
        if args.broker_command == "dynsec" and args.live:
            return _dynsec_live(args, changes)
        if args.file is None:
            raise brokerauth.BrokerAuthError("give --file (or --live to change the running broker)")
        command = brokerauth.cmd_dynsec if args.broker_command == "dynsec" else brokerauth.cmd_passwd
        return command(args.file, changes)
    return brokerauth.cmd_acl(args.service_user, args.out)


def _dynsec_live(args: argparse.Namespace, changes: AccountChanges) -> int:
    from ingest import brokeradmin, brokerauth

    if not args.admin_user or args.admin_password_file is None:
        raise brokerauth.BrokerAuthError("--live needs --admin-user NAME and --admin-password-file FILE")
    password = brokerauth.read_password_file(args.admin_password_file)
    target = brokeradmin.target_from_env(
        args.admin_user, password, host=args.host, port=args.port, timeout_s=args.timeout
    )
    return brokeradmin.cmd_dynsec_live(args.file, changes, target)


def _account_options(p: argparse.ArgumentParser, file_help: str, noun: str) -> None:
    """The options `broker dynsec` and `broker passwd` share (one body: ingest.brokerauth)."""
    p.add_argument("--file", type=Path, help=file_help)
    p.add_argument("--cred", type=Path, nargs="+", default=[], help="device credential file(s)")
    p.add_argument("--user", help="service account name (DEPIN_MQTT_USERNAME), e.g. depin-ingest")
    p.add_argument(
        "--password-file", type=Path, help="the service account's password (DEPIN_MQTT_PASSWORD_FILE)"
    )
    p.add_argument("--rotate", action="store_true", help="generate new passwords instead of reusing")
    p.add_argument(
        "--remove", nargs="+", default=[], metavar="NAME", help=f"take {noun} out (a revoked device's id)"
    )
    p.set_defaults(func=_broker)


def _add_broker_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("broker", help="Mosquitto logins and ACLs for devices and the service")
    bsub = b.add_subparsers(dest="broker_command", required=True)
    ds = bsub.add_parser(
        "dynsec",
        help="add or replace clients in Mosquitto's dynamic security file (what deploy/ uses; mode 0600)",
        description="Devices log in as their id (hex) with the password kept in their credential file "
        '("mqtt_password", generated if absent) and may publish only on their own .../up and subscribe '
        "only to their own .../ack; the service account (--user) reads every .../up, shared or not, and "
        "writes .../ack. Its password is kept in --password-file (generated if absent). Other clients, "
        "groups and roles in --file are kept. Restart Mosquitto to apply, or apply to the running broker "
        "with --live (through the plugin's control topic, as an admin: --admin-user, "
        "--admin-password-file; then --file is optional and updated too when given).",
    )
    _account_options(ds, "dynamic security JSON file to update (with --live: optional)", "clients")
    ds.add_argument(
        "--admin",
        metavar="NAME",
        help="write an admin account (role depin-broker-admin: the plugin's control topic only) with "
        "its password in --password-file (generated if absent), for --live",
    )
    live = ds.add_argument_group("live: change the running broker (its dynamic security plugin)")
    live.add_argument("--live", action="store_true", help="apply to the running broker now")
    live.add_argument("--admin-user", help="the admin account to log in as (made with --admin)")
    live.add_argument("--admin-password-file", type=Path, help="its password (first line)")
    live.add_argument("--host", help="broker host (default DEPIN_MQTT_HOST, else 127.0.0.1)")
    live.add_argument("--port", type=int, help="broker port (default DEPIN_MQTT_PORT, else 1883)")
    live.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the plugin's answer (default 5)"
    )
    pw = bsub.add_parser(
        "passwd",
        help="add or replace users in a Mosquitto password file (mode 0600; for acl_file brokers, "
        "which let a device join the service's $share group: prefer dynsec)",
        description="Devices log in as their id (hex) with the password kept in their credential file "
        '("mqtt_password", generated if absent); the service account\'s password is kept in '
        "--password-file (generated if absent). Other users in --file are kept.",
    )
    _account_options(pw, "Mosquitto password file to update", "users")
    acl = bsub.add_parser("acl", help="write the broker's ACL (devices: own topics; service: all)")
    acl.add_argument(
        "--service-user", action="append", required=True, help="service account (repeat for several)"
    )
    acl.add_argument("--out", type=Path, help="ACL file to write, mode 0600 (default: stdout)")
    acl.set_defaults(func=_broker)
    add_emqx_users_command(bsub)  # EMQX's user import file: ingest/emqxauth.py


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depin", description="DePIN ingestion and rewards service")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (ours; libraries stay quiet)")
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default=os.environ.get("DEPIN_LOG_FORMAT", "text"),
        help="text lines or one JSON object per line for log shippers (default DEPIN_LOG_FORMAT, else text)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole path locally: DB, broker, chain, fleet, epoch, claim")
    d.add_argument("--devices", type=int, default=12, help="simulated devices (default 12)")
    d.add_argument("--epochs", type=int, default=1, help="epochs to run (default 1)")
    d.add_argument("--epoch-seconds", type=float, default=20.0, help="epoch length in seconds (default 20)")
    d.add_argument("--exit", action="store_true", help="exit after the summary instead of serving the API")
    d.add_argument("--summary", type=Path, help="also write the summary as JSON to this file")
    d.add_argument("--seed", type=int, default=7, help="fleet seed (same seed, same devices)")
    d.add_argument(
        "--api-port",
        type=int,
        help="API port on 127.0.0.1 (default 8080, or a free one if 8080 is taken; 0 = any free port)",
    )
    d.add_argument(
        "--data-dir",
        type=Path,
        help="keep the run's database, broker data and files here (default: a fresh directory under "
        "$DEPIN_DATA_DIR/demo, removed at exit)",
    )
    d.set_defaults(func=_demo)

    r = sub.add_parser("run", help="run the service (settings from DEPIN_* environment variables)")
    r.add_argument("--parts", help="comma list of consume,follow,epochs,api (default: all)")
    r.set_defaults(func=_run)

    add_device_commands(sub)  # contracts, device, hw: devices/cli/
    _add_broker_commands(sub)
    add_key_commands(sub)  # api-key: ingest/keys_cli.py
    add_score_commands(sub)  # boost, epoch: ingest/score_cli.py
    add_simulate_commands(sub)  # simulate, simulate reconcile: simulator/cli.py
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The service logs its start-up, epochs and reconnects at INFO; one-shot commands speak on stdout.
    try:
        configure(verbose=args.verbose, fmt=args.log_format, service=args.command == "run")
    except ValueError as exc:  # a bad DEPIN_LOG_FORMAT (argparse checks only the flag)
        print(f"depin: error: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader of stdout went away (`depin device list | head`): stop quietly, as `cat` would;
        # point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (DepinError, ValueError, OSError, LookupError) as exc:
        print(f"{_command_name(args)}: error: {exc}", file=sys.stderr)
        return 1


def _command_name(args: argparse.Namespace) -> str:
    words = ["depin", args.command]
    for attr in (
        "contracts_command",
        "device_command",
        "hw_command",
        "broker_command",
        "key_command",
        "boost_command",
        "epoch_command",
        "sim_command",
    ):
        if getattr(args, attr, None):
            words.append(getattr(args, attr))
    return " ".join(words)


if __name__ == "__main__":
    sys.exit(main())
