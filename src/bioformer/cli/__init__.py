"""Command line: parse, call the library, print. `bioformer --help` lists the commands.

One module per command group (data, training, inference, experiment); each adds its commands
with `register(sub)`; `options` turns config dataclass fields into flags."""

from __future__ import annotations

import argparse
import logging
import sys

from bioformer.cli import data, experiment, inference, training
from bioformer.cli.options import add_config_args, config_from_args, overrides_from_args
from bioformer.errors import BioformerError

__all__ = ["add_config_args", "build_parser", "config_from_args", "main", "overrides_from_args"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioformer", description="Masked single-cell expression transformers: BioFormer (gene-pair path + TF prior) vs scGPT.")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging")
    sub = p.add_subparsers(dest="command", required=True)

    for group in (data, training, inference, experiment):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except BioformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
