"""`python -m marseval <command>`: the entry point every workflow rule calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from marseval.errors import MarsevalError
from marseval.gpu import GPU_COMMANDS, claim_gpu
from marseval.registry import RegistryError
from marseval.report.options import CURVE_NORMALIZERS, DEFAULT_REFERENCE, FIGURE_STYLES
from marseval.retrieval.index_params import IndexParams


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
    st.add_argument("--pair-image-size", type=_at_least_one, default=512,
                    help="image-text pairs: side of the centre crop (img2dataset --image_size)")
    st.add_argument("--pair-resize-mode", choices=["center_crop", "keep"], default="center_crop",
                    help="image-text pairs: img2dataset's center_crop, or the image as fetched")
    st.add_argument("--wrap-longitudes", action="store_true",
                    help="geo-localization: move ground-truth longitudes above 180 to -180..180")
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
    rp.add_argument("--exclude-dataset", action="append", default=[], metavar="DATASET",
                    help="leave this dataset out of the report (repeatable)")
    rp.add_argument("--legacy-nan-trim", action="store_true",
                    help="aggregate as the published figure: max == min datasets pooled as NaN, "
                         "trimmed as +infinity")
    rp.add_argument("--figure-style", choices=FIGURE_STYLES, default=FIGURE_STYLES[0])
    rp.add_argument("--curve-normalizer", choices=CURVE_NORMALIZERS, default=CURVE_NORMALIZERS[0],
                    help="normalise curves with the main runs' min/max or refit on their table")
    rp.add_argument("--leaderboard", action="store_true",
                    help="rank these runs among the published runs of the task under the "
                         "paper's fixed normaliser (<reference>/<task>_normalizer.json)")
    rp.add_argument("--reference", type=Path, default=Path(DEFAULT_REFERENCE), metavar="DIR",
                    help="folder of the published runs and normalisers (--leaderboard; "
                         f"default {DEFAULT_REFERENCE}, the config's report.reference)")

    _retrieval_commands(commands)

    sm = commands.add_parser("summarize-data", help="one table of standardized datasets")
    sm.add_argument("--out", required=True, type=Path)
    sm.add_argument("folders", nargs="+", type=Path)

    _plan_command(commands)

    ju = commands.add_parser("job-usage", help="benchmarked jobs' usage beside their requests")
    ju.add_argument("--benchmarks", required=True, type=Path, help="<results>/benchmarks")
    ju.add_argument("--config", required=True, type=Path, help="<results>/config.yaml")
    ju.add_argument("--out", required=True, type=Path)
    return parser


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _plan_command(commands) -> None:
    pl = commands.add_parser("plan", help="GPU-hours and wall time of a config, per stage, "
                                          "before anything is submitted")
    pl.add_argument("--config", type=Path, default=Path("config/config.yaml"),
                    help="config file (default: the paper's, config/config.yaml)")
    pl.add_argument("--device", default="a100",
                    help="row of the throughput table the GPU jobs run on (default: a100, "
                         "assumed)")
    pl.add_argument("--gpus", type=_at_least_one, default=8)
    pl.add_argument("--cores", type=_at_least_one, default=64,
                    help="CPU cores for the CPU jobs (index, evaluate)")
    pl.add_argument("--max-heads", type=_at_least_one, default=None,
                    help="most trials in one shared pass (default: the config's "
                         "bench.shared_pass_trials)")
    pl.add_argument("--expected-epoch-fraction", type=_fraction, default=0.25,
                    help="expected epochs of a trial as a fraction of its max_epochs")
    pl.add_argument("--head-step-ms", type=float, default=1.0,
                    help="per trial and batch: its share of the step overhead in a shared pass")
    pl.add_argument("--throughput", type=Path, default=None,
                    help="throughput table (default: marseval/registry/throughput.json)")
    pl.add_argument("--json", type=Path, help="also write the plan here as JSON")


def _setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-dir", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--features", type=Path, help="feature cache (omit: online training)")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false")
    parser.add_argument("--training-type", default="feature_extraction",
                        choices=["feature_extraction", "transfer_learning", "scratch"])
    parser.add_argument("--protocol", default="marsbench", choices=["marsbench", "probe"],
                        help="marsbench: the reference code's training (frozen backbone in "
                             "train mode, augmentation, last epoch tested); probe: eval-mode "
                             "frozen backbone, feature cache, best epoch (docs/fidelity.md)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="online augmentation (default: the protocol's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--selection", default=None, choices=["best", "last"],
                        help="test the best-validation or the last epoch's weights (default: "
                             "the protocol's)")
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
    tu.add_argument("--shared-pass-trials", type=int, default=1,
                    help="trials (of one batch size) trained on one frozen-backbone pass; "
                         "records do not depend on it (1: one trial at a time)")
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


def _retrieval_commands(commands) -> None:
    em = commands.add_parser("embed", help="embed one shard of a retrieval database")
    em.add_argument("--dataset-dir", required=True, type=Path)
    em.add_argument("--model", required=True)
    em.add_argument("--shard", required=True, type=int)
    em.add_argument("--shards", required=True, type=int)
    em.add_argument("--out", required=True, type=Path)
    em.add_argument("--cells", type=Path,
                    help="geo-localization: a cut CTX cell group (its cells are the database)")
    em.add_argument("--bad-images", default="stop", choices=["stop", "skip"],
                    help="an image that does not decode stops the shard, or is left out "
                         "(named in the log, counted)")
    em.add_argument("--caption-key", default="refined_caption",
                    choices=["refined_caption", "ori_caption"],
                    help="paired retrieval: which Mars-VL-Pairs caption is matched")
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                    help="on-disk precision of the shard")
    em.add_argument("--device", default="auto")
    em.add_argument("--offline", action="store_true")

    ix = commands.add_parser("index", help="merge embedding shards into one FAISS index "
                             "(the merged layout)")
    ix.add_argument("--out", required=True, type=Path)
    _index_arguments(ix)
    ix.add_argument("shards", nargs="+", type=Path)

    si = commands.add_parser("shard-index", help="the FAISS index of one embedding shard "
                             "(the sharded layout)")
    si.add_argument("--shard", required=True, type=Path)
    si.add_argument("--out", required=True, type=Path)
    _index_arguments(si)

    se = commands.add_parser("search", help="top K of every query in one embedding shard")
    se.add_argument("--shard", required=True, type=Path)
    se.add_argument("--index", type=Path, help="the shard's index folder (none: exact)")
    se.add_argument("--queries", required=True, type=Path)
    se.add_argument("--top-k", type=_top_k, default=None, help="an int, or all (default)")
    se.add_argument("--out", required=True, type=Path)
    _index_arguments(se)

    rk = commands.add_parser("rankings", help="merge the shards' search results into the "
                             "global top K")
    rk.add_argument("--out", required=True, type=Path)
    rk.add_argument("--top-k", type=_top_k, default=None, help="an int, or all (default)")
    rk.add_argument("--results", required=True, nargs="+", type=Path,
                    help="search result files, in shard order")
    rk.add_argument("--shards", required=True, nargs="+", type=Path,
                    help="the embedding shards searched, in the same order")

    qu = commands.add_parser("queries", help="text, image and hybrid query embeddings")
    qu.add_argument("--dataset-dir", required=True, type=Path)
    qu.add_argument("--model", required=True)
    qu.add_argument("--out", required=True, type=Path)
    qu.add_argument("--batch-size", type=int, default=64)
    qu.add_argument("--prompts", default="templates", choices=["templates", "single"],
                    help="text queries: the reference's 3 templates averaged, or the bare phrase")
    qu.add_argument("--landform-prompts", type=_landform_prompts, default={},
                    help='JSON {"<class>": ["prompt", ...]}: prompts replacing the templates')
    qu.add_argument("--device", default="auto")
    qu.add_argument("--offline", action="store_true")

    ev = commands.add_parser("evaluate", help="score one model on one retrieval task")
    ev.add_argument("--dataset-dir", required=True, type=Path)
    ev.add_argument("--index", type=Path, help="the merged index folder (merged layout)")
    ev.add_argument("--rankings", type=Path,
                    help="merged search results (sharded layout: landform, geolocalization)")
    ev.add_argument("--shards", nargs="+", type=Path,
                    help="embedding shards (sharded layout: paired)")
    ev.add_argument("--model", required=True)
    ev.add_argument("--queries", type=Path, help="queries file (landform, geolocalization)")
    ev.add_argument("--out", required=True, type=Path)
    ev.add_argument("--radius-deg", type=float, default=0.5)
    ev.add_argument("--radius-km", type=float, help="default: the arc of --radius-deg")
    ev.add_argument("--top-k", type=int, default=20000)
    ev.add_argument("--k-step", type=_k_step, default="auto",
                    help="K grid step: auto (the reference's max(1, max K // 100)) or an int")
    ev.add_argument("--location", default="centre", choices=["centre", "sw_corner"],
                    help="the point a retrieved tile stands for")

    rr = commands.add_parser("retrieval-report", help="summary tables and figures of a task")
    rr.add_argument("--out", required=True, type=Path)
    rr.add_argument("evaluations", nargs="+", type=Path)
    _ctx_commands(commands)


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    IndexParams.add_arguments(parser)
    parser.add_argument("--use-gpu", default="auto", choices=["auto", "yes", "no"])


def _top_k(value: str) -> int | None:
    if value == "all":
        return None
    try:
        k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"top K must be a positive int or all, got {value!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"top K must be a positive int or all, got {value!r}")
    return k


def _ctx_commands(commands) -> None:
    cd = commands.add_parser("ctx-download", help="fetch one group of CTX mosaic tiles")
    cd.add_argument("--tiles", required=True, type=lambda t: t.split(","),
                    help="tile keys, comma-separated (E-004_N-32,...)")
    cd.add_argument("--source", required=True,
                    help="base URL of the tile archives, or a local folder of them")
    cd.add_argument("--out", required=True, type=Path)
    cd.add_argument("--workers", type=int, default=4, help="parallel downloads")
    cd.add_argument("--retries", type=int, default=5)
    cd.add_argument("--offline", action="store_true")

    cc = commands.add_parser("ctx-cells", help="cut one group of CTX tiles into cells")
    cc.add_argument("--group", required=True, type=Path, help="a ctx-download folder")
    cc.add_argument("--tiles", type=lambda t: t.split(","),
                    help="the tile keys the group must hold (a stale folder stops the job)")
    cc.add_argument("--out", required=True, type=Path)
    cc.add_argument("--delta", type=float, default=0.2, help="cell size in degrees")
    cc.add_argument("--pixels", type=int, default=512)
    cc.add_argument("--drop-empty", action="store_true",
                    help="leave out all-nodata cells (the reference keeps them)")
    cc.add_argument("--workers", type=int, default=1)


def _landform_prompts(value: str) -> dict[str, list[str]]:
    try:
        prompts = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc})") from None
    if not isinstance(prompts, dict) or not all(
            isinstance(v, list) and v and all(isinstance(p, str) and p.strip() for p in v)
            for v in prompts.values()):
        raise argparse.ArgumentTypeError('needs {"<class>": ["prompt", ...], ...}')
    return prompts


def _k_step(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        step = int(value)
    except ValueError:
        step = 0
    if step < 1:
        raise argparse.ArgumentTypeError(f"'auto' or a positive int, not {value!r}")
    return step


def run_retrieval(args: argparse.Namespace) -> None:
    if getattr(args, "offline", False):
        from marseval.fetch import set_offline

        set_offline(True)
    device = getattr(args, "device", "cpu")
    if device == "auto":
        from marseval.bench.experiment import resolve_device

        device = resolve_device(device)
    if args.command == "embed":
        from marseval.retrieval.embed import embed_shard

        done = embed_shard(args.dataset_dir, args.model, args.shard, args.shards, args.out,
                           cells=args.cells, batch_size=args.batch_size, device=device,
                           dtype=args.dtype, caption_key=args.caption_key,
                           skip_bad_images=args.bad_images == "skip")
        print(f"embedded {done['rows']} items in {done['seconds']:.1f} s into {args.out}; "
              f"{len(done['skipped'])} unreadable images left out")
    elif args.command == "index":
        from marseval.retrieval.index import build_index

        info = build_index(args.shards, args.out, IndexParams.from_args(args),
                           use_gpu=args.use_gpu)
        print(f"{info['kind']} index of {info['ntotal']} {info['dim']}-d vectors in {args.out}")
    elif args.command == "shard-index":
        from marseval.retrieval.index import build_shard_index

        info = build_shard_index(args.shard, args.out, IndexParams.from_args(args),
                                 use_gpu=args.use_gpu)
        print(f"{info['kind']} index of {info['ntotal']} {info['dim']}-d vectors in {args.out}"
              + (f"; recall@10 vs exact {info['recall_at_10_vs_exact']:.3f}"
                 if "recall_at_10_vs_exact" in info else ""))
    elif args.command == "search":
        from marseval.retrieval.search import search_shard

        done = search_shard(args.shard, args.queries, args.out,
                            params=IndexParams.from_args(args), index_dir=args.index,
                            top_k=args.top_k, use_gpu=args.use_gpu)
        print(f"top {done['k']} of {done['n']} rows for modes {', '.join(done['modes'])} "
              f"in {args.out}")
    elif args.command == "rankings":
        from marseval.retrieval.search import merge_rankings, write_rankings

        rankings = merge_rankings(args.results, args.shards, args.top_k)
        write_rankings(rankings, args.out)
        print(f"top {rankings.k} of {rankings.ntotal} rows from {len(args.shards)} shards in "
              f"{args.out}")
    elif args.command == "queries":
        from marseval.retrieval.queries import build_queries

        modes = build_queries(args.dataset_dir, args.model, args.out, device=device,
                              batch_size=args.batch_size, prompts=args.prompts,
                              landform_prompts=args.landform_prompts)
        print(f"queries ({', '.join(modes)}) in {args.out}")
    elif args.command == "evaluate":
        from marseval.retrieval.evaluate import GeoOptions, evaluate

        geo = GeoOptions(args.radius_deg, args.radius_km, args.top_k, args.k_step,
                         args.location)
        record = evaluate(args.dataset_dir, args.index, args.out, model=args.model,
                          queries_path=args.queries, geo=geo, rankings_dir=args.rankings,
                          shard_dirs=args.shards)
        print(json.dumps({k: v for k, v in record.items() if k != "metrics"}))
    elif args.command == "retrieval-report":
        from marseval.retrieval.report import write_report

        print(write_report(args.evaluations, args.out).to_string(index=False))


RETRIEVAL_COMMANDS = {"embed", "index", "shard-index", "search", "rankings", "queries",
                      "evaluate", "retrieval-report"}


def _setup(args: argparse.Namespace):
    from marseval.bench.experiment import Setup
    from marseval.bench.protocol import get_protocol, resolved

    augment, selection = resolved(get_protocol(args.protocol), augment=args.augment,
                                  selection=args.selection)
    return Setup(dataset_dir=args.dataset_dir, model=args.model, features_dir=args.features,
                 pretrained=args.pretrained, training_type=args.training_type,
                 augment=augment, device=args.device, selection=selection,
                 protocol=args.protocol,
                 head=args.head, num_workers=args.num_workers, input_size=args.input_size,
                 score_resolution=args.score_resolution, drop_empty=args.drop_empty)


def run_bench(args: argparse.Namespace) -> None:
    if getattr(args, "offline", False):
        from marseval.fetch import set_offline

        set_offline(True)
    if args.command == "features":
        from marseval.bench.classification.features import cache_features
        from marseval.bench.experiment import resolve_device

        cache_features(args.dataset_dir, args.model, args.out, pretrained=args.pretrained,
                       batch_size=args.batch_size, device=resolve_device(args.device))
    elif args.command == "tune":
        from marseval.bench.grid import expand, shard
        from marseval.bench.tune import run_shard

        meta = json.loads((args.dataset_dir / "meta.json").read_text())
        trials = shard(expand(args.grid, meta["task"], meta["subtask"]), args.shard, args.shards)
        run_shard(_setup(args), trials, args.out, seed=args.seed,
                  max_trials=args.shared_pass_trials)
    elif args.command == "select":
        from marseval.bench.selection import select_best

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


def report_leaderboard(args: argparse.Namespace, options) -> None:
    """`report --leaderboard`: our runs among the published ones (marseval.report.leaderboard)."""
    from marseval.report.leaderboard import run_leaderboard

    if args.normalizer is not None:
        raise MarsevalError(f"--normalizer and --leaderboard exclude each other: the leaderboard "
                            f"normalises with the paper's {args.reference}/"
                            f"{args.task}_normalizer.json")
    summary = run_leaderboard(args.runs, args.task, args.out, args.reference, reps=args.reps,
                              ci=args.ci, seed=args.seed, earth_path=args.earth, options=options)
    ranks = ", ".join(f"{model} #{rank}" for model, rank in summary["ranks"].items())
    print(f"{args.task} leaderboard in {args.out}: {ranks} of {len(summary['models'])} models "
          f"on {len(summary['datasets'])} datasets; left out: "
          f"{'; '.join(summary['left_out']) or 'none'}")


def run(args: argparse.Namespace) -> None:
    if args.command in BENCH_COMMANDS:
        run_bench(args)
        return
    if args.command in RETRIEVAL_COMMANDS:
        run_retrieval(args)
        return
    if args.command == "report":
        from marseval.report.options import ReportOptions
        from marseval.report.run import run_report

        options = ReportOptions(tuple(args.exclude_dataset), args.legacy_nan_trim,
                                args.figure_style, args.curve_normalizer)
        if args.leaderboard:
            report_leaderboard(args, options)
            return
        summary = run_report(args.runs, args.task, args.out, reps=args.reps, ci=args.ci,
                             seed=args.seed, normalizer_path=args.normalizer,
                             earth_path=args.earth, options=options)
        print(f"{args.task}: {summary['n_main_runs']} main runs of {len(summary['models'])} "
              f"models on {len(summary['datasets'])} datasets reported in {args.out}; "
              f"dropped (max == min): {summary['dropped_datasets'] or 'none'}; "
              f"left out: {summary['excluded_datasets'] or 'none'}")
        return
    if args.command in CTX_COMMANDS:
        run_ctx(args)
        return
    if args.command == "download":
        from marseval.fetch import download, set_offline

        set_offline(args.offline)
        download(args.dataset, args.source, args.out, args.options)
        print(f"{args.dataset}: raw {args.source} data in {args.out}")
    elif args.command == "standardize":
        from marseval.data.retrieval import RetrievalOptions
        from marseval.data.standardize import standardize

        options = RetrievalOptions(args.pair_image_size, args.pair_resize_mode,
                                   args.wrap_longitudes)
        meta = standardize(args.raw, args.out, args.dataset, args.source, args.fractions,
                           args.fewshot, args.seed, args.detection_format, args.strict_counts,
                           options)
        print(f"{args.dataset}: standardized {meta['splits']} into {args.out}")
    elif args.command == "summarize-data":
        from marseval.data.summary import write_summary

        table = write_summary(args.folders, args.out)
        print(table.to_string(index=False))
    elif args.command == "plan":
        from marseval.planning import Options, make_plan, markdown, write_json
        from marseval.planning.throughput import TABLE

        options = Options(args.gpus, args.cores, args.max_heads, args.expected_epoch_fraction,
                          args.head_step_ms)
        plan = make_plan(args.config, args.device, options, args.throughput or TABLE)
        print(markdown(plan), end="")
        if args.json:
            write_json(plan, args.json)
    elif args.command == "job-usage":
        from marseval.job_usage import write_usage_table

        table = write_usage_table(args.benchmarks, args.config, args.out)
        print(table.to_string(index=False))


CTX_COMMANDS = {"ctx-download", "ctx-cells"}


def run_ctx(args: argparse.Namespace) -> None:
    if args.command == "ctx-download":
        from marseval.fetch import set_offline
        from marseval.retrieval.ctx.catalog import parse_tile
        from marseval.retrieval.ctx.fetch import fetch_group

        set_offline(args.offline)
        found = fetch_group([parse_tile(key) for key in args.tiles], args.source, args.out,
                            workers=args.workers, retries=args.retries)
        print(f"{len(found['tiles'])} CTX tiles in {args.out}")
    else:
        from marseval.retrieval.ctx.cells import CellOptions, cut_group
        from marseval.retrieval.ctx.fetch import GROUP_VRT

        options = CellOptions(args.delta, args.pixels, args.drop_empty)
        done = cut_group(args.group / GROUP_VRT, args.out, options, workers=args.workers,
                         expected=args.tiles)
        print(f"{done['cells']} cells ({done['empty_cells']} empty) in {args.out}")


def claims_gpu(args: argparse.Namespace) -> bool:
    """Whether the command is a GPU job that must claim a slot: a GPU command on `auto` or a
    bare `cuda` (`cuda:N` names its device itself), or `index --use-gpu yes` (both request
    `gpu=1` from Snakemake, see job_resources)."""
    if args.command in ("index", "shard-index", "search"):
        return args.use_gpu == "yes"
    return args.command in GPU_COMMANDS and getattr(args, "device", "auto") in ("auto", "cuda")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if claims_gpu(args):
            claim_gpu()  # before CUDA starts: concurrent GPU jobs get distinct devices
        run(args)
    except (MarsevalError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
