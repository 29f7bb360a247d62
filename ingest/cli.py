"""`depin …` commands. Thin: parse, load settings, call the service; errors are one clear line + exit 1."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ingest.logs import FORMATS, configure
from ingest.settings import Settings

if TYPE_CHECKING:
    from devices.settings import ChainSettings


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

    parts = args.parts.split(",") if args.parts else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"depin run: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    asyncio.run(run(load_settings(), parts))
    return 0


def load_settings() -> Settings:
    """Settings from DEPIN_*; a bad or contradictory value is one line naming it, not pydantic's table."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            (f"DEPIN_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise ValueError("; ".join(problems)) from None


def _broker(args: argparse.Namespace) -> int:
    from ingest import brokerauth

    if args.broker_command == "dynsec":
        return brokerauth.cmd_dynsec(
            args.file, args.cred, args.user, args.password_file, args.rotate, args.remove
        )
    if args.broker_command == "passwd":
        return brokerauth.cmd_passwd(
            args.file, args.cred, args.user, args.password_file, args.rotate, args.remove
        )
    return brokerauth.cmd_acl(args.service_user, args.out)


def _chain_settings(args: argparse.Namespace) -> ChainSettings:
    from devices.settings import ChainSettings

    return ChainSettings.resolve(
        rpc_url=args.rpc_url, deployment_file=getattr(args, "deployment", None), key_file=args.key_file
    )


def _deploy(args: argparse.Namespace) -> int:
    from devices import cli

    settings = _chain_settings(args)
    return cli.run_command(
        settings, lambda: cli.deploy(settings, args.out, args.rewards_account, force=args.force)
    )


def _device_new(args: argparse.Namespace) -> int:
    from devices.cli import device_new

    return device_new(args.out, args.show_secret, args.id)


def _device_chain(args: argparse.Namespace) -> int:
    """Every `depin device …` and `depin hw …` command that talks to the chain. Arguments are parsed
    before connecting, so bad input fails fast and sends nothing."""
    from devices import cli
    from devices.fleet import parse_device_id, parse_pubkey

    settings = _chain_settings(args)
    cmd = args.device_command if args.command == "device" else "hw-" + args.hw_command
    device_id = parse_device_id(args.device_id) if getattr(args, "device_id", None) else b""
    run: Callable[[], Awaitable[int]]
    if cmd == "register":
        dev, pubkey = cli.identity_args(args.cred, args.id, args.pubkey)
        run = lambda: cli.device_register(settings, dev, pubkey, args.owner, args.hw_class, args.cell)  # noqa: E731
    elif cmd == "register-batch":
        run = lambda: cli.device_register_batch(settings, args.csv, args.chunk_size)  # noqa: E731
    elif cmd == "revoke":
        run = lambda: cli.device_revoke(settings, device_id)  # noqa: E731
    elif cmd == "rotate-key":
        if args.cred is not None:
            if args.pubkey:
                raise ValueError("give either --pubkey or --cred, not both")
            new_dev, new_key = cli.identity_args(args.cred, None, None)
            if new_dev != device_id:
                raise ValueError(f"{args.cred} is for device {new_dev.hex()}, not {device_id.hex()}")
        elif args.pubkey:
            new_key = parse_pubkey(args.pubkey)
        else:
            raise ValueError("give the new key: --pubkey HEX or --cred FILE")
        run = lambda: cli.device_rotate_key(settings, device_id, new_key)  # noqa: E731
    elif cmd == "transfer":
        run = lambda: cli.device_transfer(settings, device_id, args.to)  # noqa: E731
    elif cmd == "set-location":
        run = lambda: cli.device_set_location(settings, device_id, args.cell)  # noqa: E731
    elif cmd == "show":
        run = lambda: cli.device_show(settings, device_id)  # noqa: E731
    elif cmd == "list":
        run = lambda: cli.device_list(settings, args.owner, args.json)  # noqa: E731
    elif cmd == "hw-list":
        run = lambda: cli.hw_list(settings)  # noqa: E731
    elif cmd == "hw-set":
        run = lambda: cli.hw_set(settings, args.class_id, args.name, args.max_speed, args.res, args.disable)  # noqa: E731
    else:
        raise AssertionError(cmd)
    return cli.run_command(settings, run)


def _chain_options() -> argparse.ArgumentParser:
    o = argparse.ArgumentParser(add_help=False)
    g = o.add_argument_group("chain connection")
    g.add_argument("--rpc-url", help="JSON-RPC URL (default DEPIN_CHAIN_RPC_URL, else http://127.0.0.1:8545)")
    g.add_argument(
        "--deployment",
        type=Path,
        help="deployment file (default DEPIN_DEPLOYMENT_FILE, else deployment.json)",
    )
    g.add_argument(
        "--key-file",
        type=Path,
        help="signer's hex private key (default DEPIN_OPERATOR_KEY_FILE, else DEPIN_OPERATOR_KEY)",
    )
    return o


def _add_device_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dv = sub.add_parser("device", help="device identities and the on-chain registry")
    dsub = dv.add_subparsers(dest="device_command", required=True)
    chain = [_chain_options()]

    new = dsub.add_parser("new", help="make a key pair and device id (credential file, mode 0600)")
    new.add_argument("--out", type=Path, required=True, help="credential file to write (never overwritten)")
    new.add_argument("--id", help="device id (64 hex digits) assigned by the manufacturer (default: random)")
    new.add_argument("--show-secret", action="store_true", help="also print the private seed")
    new.set_defaults(func=_device_new)

    reg = dsub.add_parser("register", parents=chain, help="register one device (operator)")
    reg.add_argument("--cred", type=Path, help="the device's credential file (from `depin device new`)")
    reg.add_argument("--id", help="device id, 64 hex digits (instead of --cred)")
    reg.add_argument("--pubkey", help="Ed25519 public key, 64 hex digits (with --id)")
    reg.add_argument("--owner", required=True, help="owner address")
    reg.add_argument("--class", dest="hw_class", required=True, help="hardware class: name or id")
    reg.add_argument("--cell", help="asserted H3 cell of a stationary device (e.g. 8728308280fffff)")

    batch = dsub.add_parser(
        "register-batch", parents=chain, help="register a fleet from a CSV file (operator)"
    )
    batch.add_argument("csv", type=Path, help="CSV: device_id,pubkey,owner,hw_class,asserted_cell")
    batch.add_argument("--chunk-size", type=int, default=100, help="devices per transaction (default 100)")

    rev = dsub.add_parser("revoke", parents=chain, help="revoke a device for good (operator)")
    rot = dsub.add_parser("rotate-key", parents=chain, help="set a new device key (operator or owner)")
    rot.add_argument("--pubkey", help="new Ed25519 public key, 64 hex digits")
    rot.add_argument("--cred", type=Path, help="credential file holding the new key (same device id)")
    tr = dsub.add_parser("transfer", parents=chain, help="hand a device to a new owner (owner)")
    tr.add_argument("--to", required=True, help="new owner address")
    loc = dsub.add_parser("set-location", parents=chain, help="set a stationary device's cell (operator)")
    loc.add_argument("--cell", required=True, help="H3 cell index")
    show = dsub.add_parser("show", parents=chain, help="a device's record on chain")
    for p in (rev, rot, tr, loc, show):
        p.add_argument("device_id", help="device id, 64 hex digits")

    ls = dsub.add_parser("list", parents=chain, help="devices from the registry's events")
    ls.add_argument("--owner", help="only this owner's devices")
    ls.add_argument("--json", action="store_true", help="print JSON")
    for p in (reg, batch, rev, rot, tr, loc, show, ls):
        p.set_defaults(func=_device_chain)


def _add_hw_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hw = sub.add_parser("hw", help="the on-chain hardware-class registry")
    hsub = hw.add_subparsers(dest="hw_command", required=True)
    chain = [_chain_options()]
    ls = hsub.add_parser("list", parents=chain, help="hardware classes")
    st = hsub.add_parser("set", parents=chain, help="add or change a hardware class (operator)")
    st.add_argument("class_id", type=int, help="class id (0..65535)")
    st.add_argument("--name", help="name; devices of the class publish it as `kind`")
    st.add_argument("--max-speed", type=int, help="max speed in km/h (0 = stationary)")
    st.add_argument("--res", type=int, help="H3 resolution of its readings' cells (0..15)")
    st.add_argument("--disable", action="store_true", help="disable the class (no new registrations)")
    for p in (ls, st):
        p.set_defaults(func=_device_chain)


def _account_options(p: argparse.ArgumentParser, file_help: str, noun: str) -> None:
    """The options `broker dynsec` and `broker passwd` share (one body: ingest.brokerauth)."""
    p.add_argument("--file", type=Path, required=True, help=file_help)
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
        "groups and roles in --file are kept. Restart Mosquitto to apply.",
    )
    _account_options(ds, "dynamic security JSON file to update", "clients")
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

    c = sub.add_parser("contracts", help="contract deployment")
    csub = c.add_subparsers(dest="contracts_command", required=True)
    dep = csub.add_parser("deploy", help="deploy DeviceRegistry, RewardToken, RewardDistributor")
    dep.add_argument("--rpc-url", default=None, help="JSON-RPC URL (default DEPIN_CHAIN_RPC_URL)")
    dep.add_argument(
        "--key-file", type=Path, help="file holding the deployer's hex key (default DEPIN_OPERATOR_KEY_FILE)"
    )
    dep.add_argument("--rewards-account", help="address given REWARDS_ROLE (default: the deployer)")
    dep.add_argument("--out", type=Path, default=Path("deployment.json"), help="deployment file to write")
    dep.add_argument(
        "--force", action="store_true", help="overwrite an existing --out file (its addresses are lost)"
    )
    dep.set_defaults(func=_deploy)

    _add_device_commands(sub)
    _add_hw_commands(sub)
    _add_broker_commands(sub)
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
    except (ValueError, OSError, LookupError) as exc:
        print(f"{_command_name(args)}: error: {exc}", file=sys.stderr)
        return 1


def _command_name(args: argparse.Namespace) -> str:
    words = ["depin", args.command]
    for attr in ("contracts_command", "device_command", "hw_command", "broker_command"):
        if getattr(args, attr, None):
            words.append(getattr(args, attr))
    return " ".join(words)


if __name__ == "__main__":
    sys.exit(main())
