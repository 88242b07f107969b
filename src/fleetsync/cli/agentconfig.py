"""``fleetsync agent config get [KEY] | set KEY=VALUE | unset KEY --local-config TARGET``: the agent's
local config target, changed as ``snap set`` changes snap config. TARGET is a JSON object file or
``configmap:NAMESPACE/NAME`` (reached through ``--kubeconfig``). A running agent on the same target
notices the change and sends it to the hub (the hook); gates from the hub arrive in it."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

from fleetsync.cli.flags import add_flag
from fleetsync.model.gates import gate_key_problem

if TYPE_CHECKING:
    from fleetsync.agent.localconfig import LocalConfigTarget


def register(agent: argparse.ArgumentParser) -> None:
    """``config`` under ``fleetsync agent`` (the agent itself runs when no action is given)."""
    actions = agent.add_subparsers(dest="agent_command", metavar="config", required=False)
    config = actions.add_parser("config", help="read or change the agent's local config target (like snap get/set/unset)")
    verbs = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    get = verbs.add_parser("get", help="print the config, or one key's value")
    get.add_argument("key", nargs="?", default="", help="e.g. feature.multi-region (default: every key)")
    set_ = verbs.add_parser("set", help="set keys: KEY=true|false for gates (feature.*), KEY=VALUE for others")
    set_.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    unset = verbs.add_parser("unset", help="remove keys (an unset gate is unset on the hub and every agent)")
    unset.add_argument("keys", nargs="+", metavar="KEY")
    for verb in (get, set_, unset):
        add_flag(
            verb,
            "--local-config",
            default=None,
            help="the agent's local config target (required): a JSON object file, or configmap:NAMESPACE/NAME",
        )
        add_flag(verb, "--kubeconfig", default=None, help="configmap: targets: kubeconfig of the agent's cluster (default: in-cluster config)")
        verb.set_defaults(run=run)


def _value(key: str, text: str) -> bool | str:
    if key.startswith("feature."):
        if problem := gate_key_problem(key):
            raise ValueError(problem)
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{key}: a gate is true or false, not {text!r}")
        return text.lower() == "true"
    return text


async def _run(args: argparse.Namespace, config: LocalConfigTarget) -> None:
    try:
        if args.config_command == "get":
            data = await config.read()
            if args.key:
                if args.key not in data:
                    raise SystemExit(f"fleetsync agent config get: {args.key} is not set in {config}")
                print(json.dumps(data[args.key]))
            else:
                print(json.dumps(data, indent=2, sort_keys=True))
        elif args.config_command == "set":
            changes: dict[str, bool | str | None] = {}
            for assignment in args.assignments:
                key, sep, text = assignment.partition("=")
                if not sep or not key:
                    raise ValueError(f"expected KEY=VALUE, not {assignment!r}")
                changes[key] = _value(key, text)
            await config.write(changes)
        else:
            await config.write(dict.fromkeys(args.keys))
    finally:
        await config.close()


def run(args: argparse.Namespace) -> int:
    if not args.local_config:
        raise SystemExit("fleetsync agent config: --local-config FILE|configmap:NAMESPACE/NAME is required (the target the agent was started with)")
    from fleetsync.agent.localconfig import LocalConfigError, open_target, parse_target  # the Kubernetes client: only when used

    try:
        config = open_target(parse_target(args.local_config), kubeconfig=args.kubeconfig)
        asyncio.run(_run(args, config))
    except (ValueError, LocalConfigError) as exc:
        raise SystemExit(f"fleetsync agent config {args.config_command}: {exc}") from None
    return 0
