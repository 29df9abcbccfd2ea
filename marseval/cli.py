"""`python -m marseval <command>`: the entry point every workflow rule calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from marseval.errors import MarsevalError
from marseval.registry import RegistryError


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m marseval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dl = commands.add_parser("download", help="fetch or generate a dataset's raw files")
    dl.add_argument("--dataset", required=True)
    dl.add_argument("--source", required=True, choices=["synthetic", "huggingface", "zenodo"])
    dl.add_argument("--out", required=True, type=Path)
    dl.add_argument("--options", type=_json, default={},
                    help="JSON object: synthetic settings, repo/record overrides, retries")
    dl.add_argument("--offline", action="store_true", help="forbid network access")

    st = commands.add_parser("standardize", help="write results/data/<dataset>/")
    st.add_argument("--dataset", required=True)
    st.add_argument("--raw", required=True, type=Path)
    st.add_argument("--out", required=True, type=Path)
    st.add_argument("--source", required=True)
    st.add_argument("--fractions", type=_floats, default=[])
    st.add_argument("--fewshot", type=_ints, default=[])
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--detection-format", choices=["coco", "yolo", "pascal_voc"])
    st.add_argument("--strict-counts", action="store_true",
                    help="fail when split counts differ from the registry")
    sm = commands.add_parser("summarize-data", help="one table of standardized datasets")
    sm.add_argument("--out", required=True, type=Path)
    sm.add_argument("folders", nargs="+", type=Path)
    return parser


def run(args: argparse.Namespace) -> None:
    if args.command == "download":
        from marseval.fetch import download, set_offline

        set_offline(args.offline)
        download(args.dataset, args.source, args.out, args.options)
        print(f"{args.dataset}: raw {args.source} data in {args.out}")
    elif args.command == "standardize":
        from marseval.data.standardize import standardize

        meta = standardize(args.raw, args.out, args.dataset, args.source, args.fractions,
                           args.fewshot, args.seed, args.detection_format, args.strict_counts)
        print(f"{args.dataset}: standardized {meta['splits']} into {args.out}")
    elif args.command == "summarize-data":
        from marseval.data.summary import write_summary

        table = write_summary(args.folders, args.out)
        print(table.to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (MarsevalError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
