"""ganaug: GAN-based fixes for data imbalance (detection, segmentation, classification).

Each subcommand lives in its own module exposing ``add_parser(subparsers)``, which adds
the subparser and sets ``func`` to a callable taking the parsed namespace. Only the module
of the command being run is imported (torch, mmengine and detectron2 imports take seconds),
so ``ganaug --help`` is instant and a missing optional framework breaks only its command.
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

# One-line summaries for the command list, so listing needs no imports.
SUMMARIES: dict[str, str] = {
    "det-train": "train a torchvision Faster R-CNN (baseline/PGAN/ASDN/ASTN) from a YAML config",
    "seg-compare": "train segmentors on CamVid from mmseg configs and compare them per class",
    "inspect": "diagnose a dataset's class imbalance and recommend a technique",
    "compare": "per-class metric deltas between evaluation runs, rarest class first",
    "cls-compare": "classification: GAN oversampling vs plain / oversampling / weighting",
    "rebalance": "build rebalanced label maps (segment recombination) with a report",
    "synth": "rebalanced label maps -> Pix2PixHD images: write a synthetic set",
    "p2p-fid": "FID/KID of generated vs real images with an in-domain feature net",
    "paste-learn": "train the task-aware paste synthesizer against a saved detector",
}


def _selected_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (first non-option argument), if any."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; only ``command``'s module is imported (all of them when ``"*"``)."""
    parser = argparse.ArgumentParser(prog="ganaug", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log DEBUG messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        if command != "*" and name != command:
            sub.add_parser(name, help=SUMMARIES.get(name, f"(see ganaug {name} --help)"))
            continue
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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_selected_command(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling a positional list (the overrides) at the first option, so
        # `--config C a.b=1 --out-dir D c.d=2` leaves `c.d=2` over: overrides may come
        # anywhere, like in the frameworks' own tools.
        if hasattr(args, "opts") and all("=" in e and not e.startswith("-") for e in extra):
            args.opts = [*(args.opts or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except (OSError, ValueError, KeyError) as err:
        # Bad input (a missing file, a wrong value, an unknown key): our messages name the
        # file and the problem, so a traceback only helps when debugging (-v).
        if args.verbose:
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"ganaug {args.command}: error: {msg}", file=sys.stderr)
        print("(run `ganaug -v ...` for the traceback)", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
