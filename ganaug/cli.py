"""ganaug: GAN-based fixes for data imbalance (detection, segmentation, classification).

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which adds
the subparser and sets ``func`` to a callable taking the parsed namespace. Modules are
imported only when listed here, so a missing optional framework does not break the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> module providing add_parser(subparsers)
SUBCOMMANDS: dict[str, str] = {
    "det-train": "ganaug.torchvision.engine",
    "seg-compare": "ganaug.main_job",
    "inspect": "ganaug.inspect.cli",
    "compare": "ganaug.compare",
    "cls-compare": "ganaug.classification.compare",
    "rebalance": "ganaug.p2p.rebalance_cmd",
    "synth": "ganaug.p2p.synth_cmd",
    "p2p-fid": "ganaug.p2p.fid_cmd",
    "paste-learn": "ganaug.torchvision.paste",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganaug", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            # Keep the command visible, with the reason it cannot run here.
            p = sub.add_parser(name, help=f"(unavailable: {err})")
            p.set_defaults(func=_unavailable(name, err))
            continue
        mod.add_parser(sub)
    return parser


def _unavailable(name: str, err: Exception):
    def run(_args):
        raise SystemExit(f"ganaug {name}: cannot run, a dependency is missing: {err}")

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
