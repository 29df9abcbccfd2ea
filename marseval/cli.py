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
    _bench_commands(commands)

    rp = commands.add_parser("report", help="normalise, IQM, bootstrap, figures and tables")
    rp.add_argument("--runs", required=True, type=Path, nargs="+",
                    help="runs tables in the Mars-Bench schema (ours or published)")
    rp.add_argument("--task", required=True,
                    choices=["classification", "segmentation", "detection"])
    rp.add_argument("--out", required=True, type=Path)
    rp.add_argument("--reps", type=int, default=1000, help="bootstrap repetitions")
    rp.add_argument("--ci", type=float, default=0.95, help="confidence level of intervals")
    rp.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    rp.add_argument("--normalizer", type=Path,
                    help="fixed {dataset: [min, max]} JSON instead of min/max over the runs")
    rp.add_argument("--earth", type=Path,
                    help="earth_data.csv of the paper: adds the Earth-observation figure")

    sm = commands.add_parser("summarize-data", help="one table of standardized datasets")
    sm.add_argument("--out", required=True, type=Path)
    sm.add_argument("folders", nargs="+", type=Path)
    return parser


def _setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-dir", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", type=Path, help="feature cache (omit: online training)")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    parser.add_argument("--training-type", default="feature_extraction",
                        choices=["feature_extraction", "transfer_learning", "scratch"])
    parser.add_argument("--augment", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--selection", default="best", choices=["best", "last"],
                        help="test the best-validation checkpoint (paper) or the last epoch")
    parser.add_argument("--head", default="linear", choices=["linear", "batchnorm_linear"])
    parser.add_argument("--num-workers", type=int, default=0,
                        help="image-decoding processes when training online")
    parser.add_argument("--input-size", type=int, default=None,
                        help="segmentation/detection input side in pixels (default: the model's)")
    parser.add_argument("--score-resolution", default="input", choices=["input", "native"],
                        help="segmentation: score at the model input size (paper) or native")
    parser.add_argument("--drop-empty", action="store_true",
                        help="detection: drop images without boxes, as the reference code does")
    parser.add_argument("--offline", action="store_true")


def _bench_commands(commands) -> None:
    ft = commands.add_parser("features", help="cache frozen-backbone features of a dataset")
    ft.add_argument("--dataset-dir", required=True, type=Path)
    ft.add_argument("--model", required=True)
    ft.add_argument("--out", required=True, type=Path)
    ft.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    ft.add_argument("--batch-size", type=int, default=64)
    ft.add_argument("--device", default="auto")
    ft.add_argument("--offline", action="store_true")

    tu = commands.add_parser("tune", help="run one shard of the hyperparameter grid")
    _setup_arguments(tu)
    tu.add_argument("--grid", required=True, type=_json, help="JSON of the config's bench.grid")
    tu.add_argument("--shard", required=True, type=int)
    tu.add_argument("--shards", required=True, type=int)
    tu.add_argument("--seed", type=int, default=0)
    tu.add_argument("--out", required=True, type=Path)

    se = commands.add_parser("select", help="pick the best trial of all shards")
    se.add_argument("--out", required=True, type=Path)
    se.add_argument("shards", nargs="+", type=Path)

    tr = commands.add_parser("train", help="one final run: selected hyperparameters, a seed")
    _setup_arguments(tr)
    tr.add_argument("--best", required=True, type=Path)
    tr.add_argument("--partition", required=True)
    tr.add_argument("--seeds", required=True, type=_ints, help="comma-separated seeds")
    tr.add_argument("--out", required=True, type=Path, nargs="+", help="one record per seed")

    co = commands.add_parser("collect", help="run records to a table in the Mars-Bench schema")
    co.add_argument("--out", required=True, type=Path)
    co.add_argument("runs", nargs="*", type=Path)


def _setup(args: argparse.Namespace):
    from marseval.bench.experiment import Setup

    return Setup(dataset_dir=args.dataset_dir, model=args.model, features_dir=args.features,
                 pretrained=args.pretrained, training_type=args.training_type,
                 augment=args.augment, device=args.device, selection=args.selection,
                 head=args.head, num_workers=args.num_workers, input_size=args.input_size,
                 score_resolution=args.score_resolution, drop_empty=args.drop_empty)


def run_bench(args: argparse.Namespace) -> None:
    if getattr(args, "offline", False):
        from marseval.fetch import set_offline

        set_offline(True)
    if args.command == "features":
        from marseval.bench.experiment import resolve_device
        from marseval.bench.features import cache_features

        cache_features(args.dataset_dir, args.model, args.out, pretrained=args.pretrained,
                       batch_size=args.batch_size, device=resolve_device(args.device))
    elif args.command == "tune":
        from marseval.bench.grid import expand, shard
        from marseval.bench.tune import run_shard

        meta = json.loads((args.dataset_dir / "meta.json").read_text())
        trials = shard(expand(args.grid, meta["task"], meta["subtask"]), args.shard, args.shards)
        run_shard(_setup(args), trials, args.out, seed=args.seed)
    elif args.command == "select":
        from marseval.bench.tune import select_best

        best = select_best(args.shards, args.out)
        print(f"best trial {best['trial_id']}: {best['hyperparameters']} "
              f"(validation loss {best['best_val_loss']:.4f})")
    elif args.command == "train":
        from marseval.bench.runs import train_runs

        for record in train_runs(_setup(args), args.best, args.partition, args.seeds, args.out):
            test = record["test"]
            print(f"{record['dataset']} {record['model']} {args.partition} seed "
                  f"{record['seed']}: test {test['metric']} = {test['primary']:.4f}")
    elif args.command == "collect":
        from marseval.bench.collect import write_runs_table

        table = write_runs_table(args.runs, args.out)
        print(f"{len(table)} runs in {args.out}")


BENCH_COMMANDS = {"features", "tune", "select", "train", "collect"}


def run(args: argparse.Namespace) -> None:
    if args.command in BENCH_COMMANDS:
        run_bench(args)
        return
    if args.command == "report":
        from marseval.report.run import run_report

        summary = run_report(args.runs, args.task, args.out, reps=args.reps, ci=args.ci,
                             seed=args.seed, normalizer_path=args.normalizer,
                             earth_path=args.earth)
        print(f"{args.task}: {summary['n_main_runs']} main runs of {len(summary['models'])} "
              f"models on {len(summary['datasets'])} datasets reported in {args.out}; "
              f"dropped (max == min): {summary['dropped_datasets'] or 'none'}")
        return
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
