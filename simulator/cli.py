"""`depin simulate …` and `depin simulate reconcile LEDGER`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from devices.cli.common import chain_options
from devices.sdk import BrokerLogin
from devices.settings import ChainSettings
from simulator.fleet import SimDevice
from simulator.ledger import Ledger

if TYPE_CHECKING:
    from simulator.run import Broker, LoginProvisioner
from simulator.scenario import BUILTINS, CHEATERS, load_scenario, with_overrides


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], provisioner: LoginProvisioner | None = None
) -> None:
    """`provisioner`: creates broker logins on a running broker (ingest/dev/simulate.py passes the
    dynamic security one); without it `--broker-admin-user` is refused."""
    p = sub.add_parser(
        "simulate",
        parents=[chain_options()],
        help="drive honest fleets, cheaters or load against a running service; write and reconcile a ledger",
        description="Runs a scenario (a built-in: " + ", ".join(BUILTINS) + "; or a TOML file) against the "
        "broker of a running service and writes a ledger of what it sent and what each message should "
        "come to; `depin simulate reconcile LEDGER` then compares it with the service's database.",
    )
    p.add_argument("--scenario", default="honest", help="built-in name or TOML file (default honest)")
    p.add_argument(
        "--cred", type=Path, nargs="+", default=[], metavar="FILE", help="drive these registered devices too"
    )
    p.add_argument(
        "--no-fleet", action="store_true", help="drive only the --cred devices (no generated ones)"
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="seconds of device time each honest device covers, ending now",
    )
    p.add_argument("--register", action="store_true", help="register the generated devices (operator key)")
    p.add_argument("--ledger", type=Path, help="ledger file to write (default sim-ledger-<time>.json)")
    p.add_argument("--host", help="broker host (default DEPIN_MQTT_HOST, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="broker port (default DEPIN_MQTT_PORT, else 1883)")
    p.add_argument("--username", help="broker login for messages of devices without their own")
    p.add_argument("--password-file", type=Path, help="its password")
    p.add_argument(
        "--broker-admin-user",
        help="on a secured broker: create the generated devices' logins live as this admin "
        "(`depin broker dynsec --admin`) before publishing",
    )
    p.add_argument("--broker-admin-password-file", type=Path, help="the admin's password (first line)")
    p.add_argument(
        "--save-creds",
        type=Path,
        metavar="DIR",
        help="write the generated devices' credential files (0600, with their mqtt_password when "
        "--broker-admin-user made one) here, for --cred later",
    )
    p.add_argument(
        "--database-url",
        help="the service's database, to wait for the registry mirror (default DEPIN_DATABASE_URL)",
    )
    p.add_argument("--dry-run", action="store_true", help="plan and write the ledger, send nothing")
    g = p.add_argument_group("cheaters (each a count; overrides the scenario)")
    for name, c in CHEATERS.items():
        g.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            metavar="N",
            dest=f"cheat_{name}",
            help=f"{c.does} → {c.outcome}",
        )
    lg = p.add_argument_group("load (overrides the scenario's [load])")
    lg.add_argument("--rate", type=float, help="target packets/s")
    lg.add_argument("--seconds", type=float, help="how long")
    lg.add_argument(
        "--connections",
        type=int,
        help="MQTT connections to spread the packets over (with --broker-admin-user: one per device)",
    )
    p.set_defaults(func=_simulate, provisioner=provisioner)
    ssub = p.add_subparsers(dest="sim_command")
    r = ssub.add_parser("reconcile", help="compare a ledger with what the service stored, rejected, flagged")
    r.add_argument("ledger", type=Path)
    r.add_argument("--database-url", dest="reconcile_dsn", help="default DEPIN_DATABASE_URL")
    r.add_argument(
        "--wait", type=float, default=10.0, help="re-read for up to this many seconds (default 10)"
    )
    r.add_argument("--json", action="store_true", help="print the differences as JSON")
    r.set_defaults(func=_reconcile)


def _dsn(value: str | None) -> str | None:
    return value or os.environ.get("DEPIN_DATABASE_URL") or None


def _broker(args: argparse.Namespace) -> Broker:
    from simulator.run import Broker

    login = None
    username = args.username
    if username:
        pw = args.password_file.read_text().strip() if args.password_file else None
        login = BrokerLogin(username, pw)
    return Broker(
        args.host or os.environ.get("DEPIN_MQTT_HOST", "127.0.0.1"),
        args.port or int(os.environ.get("DEPIN_MQTT_PORT", "1883")),
        login,
    )


def _admin_login(args: argparse.Namespace) -> BrokerLogin | None:
    """The broker admin's login, for creating the generated devices' logins (`--register` only)."""
    if args.broker_admin_user is None:
        if args.broker_admin_password_file is not None:
            raise ValueError("--broker-admin-password-file belongs to --broker-admin-user")
        return None
    if args.broker_admin_password_file is None:
        raise ValueError("--broker-admin-user needs --broker-admin-password-file")
    if not args.register:
        raise ValueError(
            "--broker-admin-user creates the logins of the devices --register registers: add --register"
        )
    if args.provisioner is None:
        raise ValueError("this build of `depin simulate` cannot create broker logins")
    lines = args.broker_admin_password_file.read_text().strip().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"the password file {args.broker_admin_password_file} is empty")
    return BrokerLogin(args.broker_admin_user, lines[0].strip())


def _simulate(args: argparse.Namespace) -> int:
    return asyncio.run(_simulate_async(args))


async def _simulate_async(args: argparse.Namespace) -> int:
    from simulator import run
    from simulator.plan import make_plan

    s = load_scenario(args.scenario)
    overrides = {n: getattr(args, f"cheat_{n}") for n in CHEATERS if getattr(args, f"cheat_{n}") is not None}
    s = with_overrides(s, overrides)
    if args.no_fleet:
        s = replace(s, honest=replace(s.honest, dashcams=0, weather=0, air=0))
    if args.duration is not None:
        if args.duration <= 0:
            raise ValueError("--duration must be > 0")
        s = replace(s, honest=replace(s.honest, duration_s=args.duration))
    if args.rate is not None or args.seconds is not None or args.connections is not None:
        s = replace(
            s,
            load=replace(
                s.load,
                rate=args.rate if args.rate is not None else s.load.rate,
                seconds=args.seconds if args.seconds is not None else s.load.seconds,
                connections=args.connections if args.connections is not None else s.load.connections,
            ),
        )
    chain = ChainSettings.resolve(
        rpc_url=args.rpc_url, deployment_file=args.deployment, key_file=args.key_file
    )
    broker = _broker(args)
    dsn = _dsn(args.database_url)
    ledger_path = args.ledger or Path(f"sim-ledger-{time.strftime('%Y%m%dT%H%M%S')}.json")
    admin = _admin_login(args)
    if s.load.rate > 0:
        provision = None
        if admin is not None:  # a secured broker: each load device gets a login and a connection

            async def provision(passwords: dict[str, str]) -> None:
                await args.provisioner(broker.host, broker.port, admin, passwords)

        report = await run.run_load(
            s,
            broker,
            chain=chain if args.register else None,
            dsn=dsn,
            ledger_path=ledger_path,
            provision=provision,
        )
        print(json.dumps(report.summary()))
        if report.committed == 0:
            run.say(
                "no commit feedback came back: run the service with DEPIN_ACK_FEEDBACK=true for latencies"
            )
        run.say(f"ledger {ledger_path}")
        return 0
    creds: list[SimDevice] = []
    logins: dict[str, BrokerLogin] = {}
    expect: dict[str, tuple[str, str]] = {}
    if args.cred:
        creds, logins, expect = await run.cred_devices(args.cred, chain, s.region.center, s.seed, dsn)
    plan = make_plan(s, run.now_ms(), cred_devices=creds, cred_expect=expect, broker_logins=admin is not None)
    assert plan.ledger is not None
    passwords: dict[str, str] = {}
    if args.register and not args.dry_run:
        plan.ledger.notes += await run.register(plan, chain)
        if admin is not None:
            passwords = {d.identity.hex_id: secrets.token_urlsafe(24) for d in plan.login_devices()}
            await args.provisioner(broker.host, broker.port, admin, passwords)
            logins.update({h: BrokerLogin(h, pw) for h, pw in passwords.items()})
            note = f"broker logins created live for {len(passwords)} devices"
            if plan.no_login:
                note += f"; {len(plan.no_login)} unregistered device(s) have none (refused at connect)"
            plan.ledger.notes.append(note)
            run.say(note)
        if dsn:
            ids = [d.device_id for d in plan.register] + [d.device_id for d, _ in plan.coarse]
            await run.wait_mirrored(dsn, ids)
        else:
            run.say("no database URL: waiting 5 s for the service's registry mirror")
            await asyncio.sleep(5)
    plan.ledger.save(ledger_path)
    if args.save_creds is not None:
        classes = {h: info["class"] for h, info in plan.ledger.devices.items()}
        saved = run.save_creds(args.save_creds, plan.login_devices(), passwords, classes)
        run.say(f"{len(saved)} credential files in {args.save_creds}")
    if args.dry_run:
        run.say(f"dry run: {len(plan.items)} messages planned; ledger {ledger_path}")
        return 0
    seconds, refused = await run.publish(plan.items, broker, logins, no_login=plan.no_login)
    sent = f"sent {len(plan.items) - refused} messages"
    if refused:
        sent += f" ({refused} more refused at login)"
    run.say(f"scenario {s.name}: {sent} in {seconds:.2f} s; ledger {ledger_path}")
    for line in run.summary_lines(plan.ledger):
        print(line)
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    from simulator import run

    dsn = _dsn(args.reconcile_dsn)
    if not dsn:
        raise ValueError("no database: pass --database-url or set DEPIN_DATABASE_URL")
    ledger = Ledger.load(args.ledger)
    diffs = asyncio.run(run.reconcile(dsn, ledger, args.wait))
    if args.json:
        print(json.dumps({"ledger": str(args.ledger), "differences": diffs}))
    else:
        for d in diffs:
            print(d)
        n = sum(e.last - e.first + 1 for e in ledger.entries) + sum(u.count for u in ledger.unsequenced)
        verdict = f"{len(diffs)} difference(s)" if diffs else "no differences"
        print(
            f"reconciled {n} expected outcomes of {len(ledger.device_ids())} devices: {verdict}",
            file=sys.stderr if diffs else sys.stdout,
        )
    return 1 if diffs else 0
