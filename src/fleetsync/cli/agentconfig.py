"""``fleetsync agent config get [KEY] | set KEY=VALUE | unset KEY --local-config FILE``: the agent's
local config target, changed as ``snap set`` changes snap config. A running agent on the same
file notices the change and sends it to the hub (the hook); gates from the hub arrive in it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fleetsync.agent.localconfig import LocalConfig, LocalConfigError
from fleetsync.cli.flags import add_flag
from fleetsync.model.gates import gate_key_problem


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
        add_flag(verb, "--local-config", type=Path, default=None, help="the agent's local config file (required)")
        verb.set_defaults(run=run)


def _value(key: str, text: str) -> bool | str:
    if key.startswith("feature."):
        if problem := gate_key_problem(key):
            raise ValueError(problem)
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{key}: a gate is true or false, not {text!r}")
        return text.lower() == "true"
    return text


def run(args: argparse.Namespace) -> int:
    if args.local_config is None:
        raise SystemExit("fleetsync agent config: --local-config FILE is required (the file the agent was started with)")
    config = LocalConfig(args.local_config)
    try:
        if args.config_command == "get":
            data = config.read()
            if args.key:
                if args.key not in data:
                    raise SystemExit(f"fleetsync agent config get: {args.key} is not set in {args.local_config}")
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
            config.update(changes)
        else:
            config.update(dict.fromkeys(args.keys))
    except (ValueError, LocalConfigError) as exc:
        raise SystemExit(f"fleetsync agent config {args.config_command}: {exc}") from None
    return 0
