"""The ``vitpose`` command (also ``python -m vitpose``): one module per subcommand, each with an
``add_parser(subparsers)`` that registers it.

    vitpose predict --checkpoint F [--boxes B.json] IMAGE_OR_DIR_OR_VIDEO... --out DIR
    vitpose evaluate --checkpoint F --ann A.json --dets D.json --images DIR
    vitpose synth OUT --images N --seed S [--val-images M]
    vitpose train --data DIR --model NAME_OR_CONFIG --epochs E --batch-size B --out RUN [--resume RUN]
"""
from __future__ import annotations

import argparse
import sys

from . import evaluate, predict, synth, train

COMMANDS = (predict, evaluate, synth, train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitpose", description="ViTPose-family pose estimation")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # whole-run errors: one clear line
        print(f"vitpose {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
