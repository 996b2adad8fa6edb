"""`bac`: the command line of the ROS-free core (profile, inspect, convert, train, eval, bench)."""

from __future__ import annotations

import argparse
import sys

from bac_ros import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bac", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bac_ros {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
