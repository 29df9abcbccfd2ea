"""The CTX chain of one config: which tiles, in which groups, fetched from where.

Pure functions of the config (the Snakefile calls them while it is parsed). The groups fix
the jobs: group g is downloaded by one `ctx_download` job, cut by one `ctx_cells` job and
embedded by one `embed` job per model (its shard g).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from marseval.errors import MarsevalError
from marseval.registry import get_dataset
from marseval.retrieval.ctx.catalog import CtxTile, cells_per_tile, ctx_tiles, tile_groups


def _geo_dataset(config: dict[str, Any]) -> str | None:
    found = [n for n in config["datasets"]
             if get_dataset(n).task == "retrieval" and get_dataset(n).subtask == "geolocalization"]
    return found[0] if found else None


def run_groups(config: dict[str, Any]) -> list[list[CtxTile]]:
    options = config["retrieval"]
    region = options["ctx"]["region"]
    return list(_groups(options["max_abs_lat"], tuple(region) if region else None,
                        options["ctx"]["tiles_per_group"]))


@functools.cache  # the Snakefile asks once per job: 90 groups, 900 jobs in the paper
def _groups(max_abs_lat: float, region: tuple[float, ...] | None, per_group: int
            ) -> tuple[list[CtxTile], ...]:
    return tuple(tile_groups(ctx_tiles(max_abs_lat, list(region) if region else None),
                             per_group))


def ctx_source(config: dict[str, Any]) -> str:
    """`synthetic` (fake tiles the generator writes) or `murray_lab`: `auto` follows the
    geo-localization dataset's source."""
    from marseval.workflow import source_of  # workflow imports this module's callers

    chosen = config["retrieval"]["ctx"]["source"]
    if chosen != "auto":
        return chosen
    geo = _geo_dataset(config)
    source = source_of(config, geo) if geo else config["source"]
    return "synthetic" if source == "synthetic" else "murray_lab"


def group_ids(config: dict[str, Any]) -> list[str]:
    """`<index>-<digest of its tile keys>` per group: a folder name that changes with the
    tiles, so a config that regroups them makes new folders instead of reusing stale ones
    (the workflow reruns on file times, not on parameters)."""
    return list(_ids(tuple(_keys(group) for group in run_groups(config))))


@functools.cache
def _ids(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{i:03d}-{hashlib.sha1(k.encode()).hexdigest()[:8]}" for i, k in enumerate(keys))


def _keys(group: list[CtxTile]) -> str:
    return ",".join(t.key for t in group)


def group_tiles(config: dict[str, Any], group_id: str) -> str:
    """The tile keys of a group, comma-separated (the download and cutting jobs' argument)."""
    ids = group_ids(config)
    if group_id not in ids:
        raise MarsevalError(f"CTX group {group_id!r} is not a group of this config "
                            f"({len(ids)} groups: {ids[0]} ... {ids[-1]})")
    return _keys(run_groups(config)[ids.index(group_id)])


def group_cells(config: dict[str, Any]) -> int:
    """Cells of the largest group (job sizing)."""
    largest = max(len(g) for g in run_groups(config))
    return largest * cells_per_tile(config["retrieval"]["tile_delta"])


def embed_shard_count(config: dict[str, Any], dataset: str) -> int:
    """Embedding shards of a retrieval database: one per CTX group for geo-localization."""
    if get_dataset(dataset).subtask == "geolocalization":
        return len(run_groups(config))
    return config["retrieval"]["embed_shards"]


def _geo_raw_dir(config: dict[str, Any]) -> str:
    from marseval.workflow import raw_dir  # workflow imports this module's callers

    return raw_dir(config, _geo_dataset(config) or "mr-geolocalization")


def ctx_archives(config: dict[str, Any]) -> str:
    """Where the tile archives come from: Murray Lab's URL, or the synthetic planet's folder."""
    if ctx_source(config) == "synthetic":
        from marseval.data.synthetic.retrieval import CTX_FOLDER

        return f"{_geo_raw_dir(config)}/{CTX_FOLDER}"
    return config["retrieval"]["ctx"]["url"]


def ctx_archive_inputs(config: dict[str, Any]) -> list[str]:
    """The download job's input: the synthetic dataset that writes the fake archives."""
    return [_geo_raw_dir(config)] if ctx_source(config) == "synthetic" else []


def synthetic_ctx_options(config: dict[str, Any]) -> dict[str, Any]:
    """What the synthetic generator needs to write the fake tiles of this config."""
    return {"region": config["retrieval"]["ctx"]["region"],
            "max_abs_lat": config["retrieval"]["max_abs_lat"],
            "pixels": config["synthetic"]["retrieval"]["ctx_pixels"]}
