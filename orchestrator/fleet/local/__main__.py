"""`python -m orchestrator.fleet.local`: the local-host entry points terraform and operators use.

    create JSON       create/start one host and wait until it is ready (terraform create provisioner)
    destroy JSON      destroy one host (terraform destroy provisioner)
    build-image       build/unpack the cached host image now
    gc                remove hosts whose host dir was deleted under them (processes, mounts, bridges)
                      and images of older recipes that no host uses
    status STATE_DIR  print the state of every host recorded in STATE_DIR as JSON

JSON is the `input` of the module's terraform_data resource: name, address, groups, bridge,
subnet, state_dir, project_dir. Errors go to stderr, one line, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.errors import OrchestratorError
from orchestrator.fleet.local.fleet import HostRecord, LocalFleet, collect_garbage
from orchestrator.fleet.local.image import ImageRecipe, ImageStore, prune_images
from orchestrator.fleet.local.network import FleetNetwork
from orchestrator.fleet.local.terraform import TerraformHost


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.fleet.local", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("create", help="create/start a host and wait for it").add_argument("spec")
    sub.add_parser("destroy", help="destroy a host").add_argument("spec")
    sub.add_parser("build-image", help="build and unpack the host image")
    sub.add_parser("gc", help="remove hosts whose host dir is gone")
    sub.add_parser("status", help="states of the hosts in a state dir").add_argument("state_dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one action; return the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.action == "build-image":
            # each phase on stderr (debootstrap's own progress lines while it builds), the path on stdout
            print(ImageStore().ensure(ImageRecipe(), on_progress=lambda phase: print(f"image: {phase}", file=sys.stderr,
                                                                                      flush=True)))
            return 0
        if args.action == "gc":
            for name in collect_garbage():
                print(f"removed host {name}")
            for digest in prune_images():
                print(f"removed image {digest}")
            return 0
        if args.action == "status":
            states = {}
            for name in sorted(p.parent.name for p in args.state_dir.glob("*/host.json")):
                record = HostRecord.load(args.state_dir / name / "host.json")
                fleet = LocalFleet(FleetNetwork(record.bridge, record.subnet), args.state_dir,
                                         args.state_dir.parent)
                states[name] = fleet.state(name)
            print(json.dumps(states, indent=2))
            return 0
        host = TerraformHost.from_json(args.spec)
        fleet = host.fleet()
        if args.action == "create":
            fleet.ensure(host.spec())
        else:
            fleet.destroy(host.name)
        return 0
    except OrchestratorError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        tail = getattr(exc, "output_tail", "")
        if tail:
            print(tail, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
