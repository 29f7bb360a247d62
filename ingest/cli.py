"""`depin …` commands. Thin: parse, load settings, call the service; errors are one clear line + exit 1."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from ingest.settings import Settings


def _demo(args: argparse.Namespace) -> int:
    from ingest.demo import DemoOptions, run_demo

    opts = DemoOptions(
        devices=args.devices,
        epochs=args.epochs,
        epoch_seconds=args.epoch_seconds,
        exit=args.exit,
        summary=args.summary,
        seed=args.seed,
        api_port=args.api_port,
    )
    try:
        asyncio.run(run_demo(opts))
    except KeyboardInterrupt:
        pass
    return 0


def _run(args: argparse.Namespace) -> int:
    from ingest.service import PARTS, run

    parts = args.parts.split(",") if args.parts else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"depin run: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    asyncio.run(run(Settings(), parts))
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from devices.cli import deploy

    return asyncio.run(deploy(args.rpc_url, args.key_file, args.out, args.rewards_account))


def _device(args: argparse.Namespace) -> int:
    from devices.cli import device_new

    return device_new(args.out, args.show_secret)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depin", description="DePIN ingestion and rewards service")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the whole path locally: DB, broker, chain, fleet, epoch, claim")
    d.add_argument("--devices", type=int, default=12, help="simulated devices (default 12)")
    d.add_argument("--epochs", type=int, default=1, help="epochs to run (default 1)")
    d.add_argument("--epoch-seconds", type=float, default=20.0, help="epoch length in seconds (default 20)")
    d.add_argument("--exit", action="store_true", help="exit after the summary instead of serving the API")
    d.add_argument("--summary", type=Path, help="also write the summary as JSON to this file")
    d.add_argument("--seed", type=int, default=7, help="fleet seed (same seed, same devices)")
    d.add_argument("--api-port", type=int, default=8080, help="API port on 127.0.0.1 (0 = any free port)")
    d.set_defaults(func=_demo)

    r = sub.add_parser("run", help="run the service (settings from DEPIN_* environment variables)")
    r.add_argument("--parts", help="comma list of consume,follow,epochs,api (default: all)")
    r.set_defaults(func=_run)

    c = sub.add_parser("contracts", help="contract deployment")
    csub = c.add_subparsers(dest="contracts_command", required=True)
    dep = csub.add_parser("deploy", help="deploy DeviceRegistry, RewardToken, RewardDistributor")
    dep.add_argument("--rpc-url", default=None, help="JSON-RPC URL (default DEPIN_CHAIN_RPC_URL)")
    dep.add_argument("--key-file", type=Path, required=True, help="file holding the deployer's hex key")
    dep.add_argument("--rewards-account", help="address given REWARDS_ROLE (default: the deployer)")
    dep.add_argument("--out", type=Path, default=Path("deployment.json"), help="deployment file to write")
    dep.set_defaults(func=_deploy)

    dv = sub.add_parser("device", help="device identities")
    dsub = dv.add_subparsers(dest="device_command", required=True)
    new = dsub.add_parser("new", help="make a key pair and device id (credential file, mode 0600)")
    new.add_argument("--out", type=Path, required=True, help="credential file to write")
    new.add_argument("--show-secret", action="store_true", help="also print the private seed")
    new.set_defaults(func=_device)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except (ValueError, OSError, LookupError) as exc:
        print(f"depin {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
