"""The `poolbudget` command: `plan` previews the operator's plan offline, `crd` prints the CRD, `run` runs it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from poolbudget import __version__
from poolbudget.adapters.postgres import DatabaseError, read_limits
from poolbudget.api.crd import crd_yaml
from poolbudget.api.limits import DatabaseLimits
from poolbudget.api.manifests import ManifestError, Manifests, load_manifests
from poolbudget.api.models import PoolBudget
from poolbudget.api.workloads import budget_of
from poolbudget.delivery.env import desired_env
from poolbudget.delivery.live import live_env
from poolbudget.planning.budget import BudgetOutcome, Refusal, plan_for_budget
from poolbudget.planning.live import offline_reserve
from poolbudget.runtime.runner import run_operator

EXIT_OK, EXIT_INVALID, EXIT_OVERCOMMITTED = 0, 2, 3


class UsageError(Exception):
    """Input the command cannot plan from (exit 2)."""


def _limits_for(budget: PoolBudget, args: argparse.Namespace) -> DatabaseLimits:
    if args.max_connections is not None:
        return DatabaseLimits(args.max_connections, source="flag")
    if args.database_url:
        try:
            return asyncio.run(read_limits(args.database_url, role=budget.spec.database.role))
        except DatabaseError as exc:
            raise UsageError(f"PoolBudget {budget.name}: cannot read limits: {exc}") from None
    if budget.spec.database.max_connections is None:
        raise UsageError(
            f"PoolBudget {budget.name}: spec.database.maxConnections is not set; "
            "pass --max-connections N or --database-url URL"
        )
    return DatabaseLimits(budget.spec.database.max_connections, source="spec")


def with_delivery(manifests: Manifests, mode: str) -> Manifests:
    """The manifests with every budget's ``spec.delivery.mode`` set to ``mode`` (``plan --delivery``)."""
    budgets = [
        b.model_copy(
            update={
                "spec": b.spec.model_copy(
                    update={"delivery": b.spec.delivery.model_copy(update={"mode": mode})}
                )
            }
        )
        for b in manifests.budgets
    ]
    return replace(manifests, budgets=budgets)


def plan_manifests(
    manifests: Manifests, args: argparse.Namespace
) -> tuple[list[BudgetOutcome], list[Refusal]]:
    """Plan every budget in the manifests; refusals include Deployments naming a budget that is not there."""
    known = {b.name for b in manifests.budgets}
    orphans = [
        Refusal(
            *d.key,
            f"annotation poolbudget.io/budget names PoolBudget {budget_of(d.metadata.annotations)!r}, "
            "which is not among the manifests",
        )
        for d in manifests.deployments
        if (name := budget_of(d.metadata.annotations)) is not None and name not in known
    ]
    outcomes = []
    for budget in sorted(manifests.budgets, key=lambda b: b.name):
        drawing = [d for d in manifests.deployments if budget_of(d.metadata.annotations) == budget.name]
        plan = partial(
            plan_for_budget,
            budget,
            _limits_for(budget, args),
            drawing,
            manifests.hpas,
            manifests.namespace_labels,
        )
        outcome = plan()
        if any(m.live for m in outcome.managed.values()):
            # Live, offline: each Deployment's replicas are taken as its running pods (every pod allotted);
            # the floor of every pod its HPA or surge may add is kept aside.
            running = {d.key: d.spec.replicas if d.spec.replicas is not None else 1 for d in drawing}
            outcome = plan(live_pods=running)
            outcome = plan(
                live_pods=running, live_held=offline_reserve(budget.spec.delivery.floor_per_process, outcome)
            )
        outcomes.append(outcome)
    return outcomes, orphans


def _budget_document(budget: PoolBudget, outcome: BudgetOutcome) -> dict[str, Any]:
    plan = outcome.plan
    deployments = []
    for allocation in plan.allocations:
        w = allocation.workload
        managed = outcome.managed[w.key]
        if managed.live:
            env = {
                c: {k: v for k, v in e.items() if isinstance(v, str)}
                for c, e in live_env(budget, managed, {}).items()
            }
        else:
            env = desired_env(budget, managed, allocation)
        deployments.append(
            {
                "namespace": w.namespace,
                "name": w.name,
                "profile": w.profile,
                "pods": w.pods,
                "processesPerPod": w.processes_per_pod,
                "poolsPerProcess": w.pools_per_process,
                "perProcess": {"poolSize": allocation.pool_size, "maxOverflow": allocation.max_overflow},
                "connections": allocation.connections,
                "reason": allocation.reason,
                "env": [{"name": k, "value": v} for k, v in env[managed.containers[0].name].items()],
                "containers": [
                    {"name": c, "env": [{"name": k, "value": v} for k, v in entries.items()]}
                    for c, entries in env.items()
                ],
                "delivery": "live" if managed.live else "env",
            }
        )
    return {
        "name": plan.name,
        "maxConnections": plan.availability.max_connections,
        "available": plan.available,
        "availableReason": plan.availability.reason,
        "allocated": plan.allocated,
        "liveReserve": offline_reserve(budget.spec.delivery.floor_per_process, outcome),
        "feasible": plan.feasible,
        "shortfall": plan.shortfall,
        "deployments": deployments,
        "refused": [
            {"namespace": r.namespace, "name": r.name, "message": r.message} for r in outcome.refused
        ],
    }


def _table(documents: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for doc in documents:
        verdict = "fits" if doc["feasible"] else f"OVERCOMMITTED by {doc['shortfall']}"
        lines.append(f"PoolBudget {doc['name']}: available {doc['availableReason']}")
        kept = f" (+{doc['liveReserve']} at the floor for live pods to come)" if doc["liveReserve"] else ""
        lines.append(f"  allocated {doc['allocated']}{kept} of {doc['available']}: {verdict}")
        header = ("NAMESPACE", "DEPLOYMENT", "PROFILE", "PODS", "PROCS", "POOL", "OVERFLOW", "CONNECTIONS")
        rows = [header] + [
            (
                d["namespace"],
                d["name"],
                d["profile"],
                str(d["pods"]),
                str(d["processesPerPod"]),
                str(d["perProcess"]["poolSize"]),
                str(d["perProcess"]["maxOverflow"]),
                str(d["connections"]),
            )
            for d in doc["deployments"]
        ]
        if any(d["delivery"] == "live" for d in doc["deployments"]):
            # A DELIVERY column after PROFILE, only where something is live.
            deliveries = ["DELIVERY"] + [d["delivery"] for d in doc["deployments"]]
            rows = [(*r[:3], mode, *r[3:]) for r, mode in zip(rows, deliveries, strict=True)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += [
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines += [f"  why {d['namespace']}/{d['name']}: {d['reason']}" for d in doc["deployments"]]
        lines.append("")
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        manifests = load_manifests(args.file)
        if args.delivery:
            manifests = with_delivery(manifests, args.delivery)
        if not manifests.budgets:
            raise UsageError("no PoolBudget found in " + ", ".join(args.file))
        outcomes, orphans = plan_manifests(manifests, args)
    except (ManifestError, UsageError) as exc:
        print(f"poolbudget plan: {exc}", file=sys.stderr)
        return EXIT_INVALID
    by_name = {b.name: b for b in manifests.budgets}
    documents = [_budget_document(by_name[o.plan.name], o) for o in outcomes]
    for refusal in [r for o in outcomes for r in o.refused] + orphans:
        print(f"warning: Deployment {refusal.namespace}/{refusal.name}: {refusal.message}", file=sys.stderr)
    for outcome in outcomes:
        for (ns, name), managed in outcome.managed.items():
            if managed.delivery_note:
                print(f"warning: Deployment {ns}/{name}: {managed.delivery_note}", file=sys.stderr)
    result = {"budgets": documents}
    if args.output == "json":
        print(json.dumps(result, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
    else:
        print(_table(documents), end="")
    for doc in documents:
        if not doc["feasible"]:
            print(
                f"error: PoolBudget {doc['name']} is overcommitted: the minimums need {doc['shortfall']} "
                f"more connections than the {doc['available']} available",
                file=sys.stderr,
            )
    return EXIT_OK if all(d["feasible"] for d in documents) else EXIT_OVERCOMMITTED


def cmd_crd(args: argparse.Namespace) -> int:
    text = crd_yaml()
    if args.output_file:
        Path(args.output_file).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    return run_operator(namespaces=args.namespace, standalone=args.standalone, liveness=args.liveness)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolbudget", description=__doc__)
    parser.add_argument("--version", action="version", version=f"poolbudget {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="preview the plan for PoolBudgets and Deployments in YAML files")
    plan.add_argument(
        "-f",
        "--file",
        action="append",
        required=True,
        metavar="PATH",
        help="a YAML file or a directory of them (repeatable)",
    )
    source = plan.add_mutually_exclusive_group()
    source.add_argument("--max-connections", type=int, metavar="N", help="plan for this max_connections")
    source.add_argument("--database-url", metavar="URL", help="read the real limits from this database")
    plan.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    plan.add_argument(
        "--delivery",
        choices=("env", "live"),
        help="plan every budget in this delivery mode (default: each budget's spec.delivery.mode); live takes "
        "each Deployment's replicas as its running pods and keeps the floor aside for the pods to come",
    )
    plan.set_defaults(func=cmd_plan)

    crd = sub.add_parser("crd", help="print the PoolBudget CustomResourceDefinition")
    crd.add_argument("-o", "--output-file", metavar="FILE", help="write it to FILE instead of stdout")
    crd.set_defaults(func=cmd_crd)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument("-n", "--namespace", action="append", default=[], help="watch only these namespaces")
    run.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint")
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_connections", None) is not None and args.max_connections < 1:
        print("poolbudget plan: --max-connections must be at least 1", file=sys.stderr)
        return EXIT_INVALID
    command: int = args.func(args)
    return command


if __name__ == "__main__":
    sys.exit(main())
