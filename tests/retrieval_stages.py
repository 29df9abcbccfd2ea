"""embed -> index -> queries -> evaluate on a small synthetic retrieval set, as the workflow's
jobs run them: the end-to-end check every embedder family's tests share."""

from __future__ import annotations

import json
from pathlib import Path


def run_retrieval_stages(name: str, dataset: str, folder: Path, dim: int) -> dict:
    """Run the retrieval stages of `dataset` (mr-vl_pairs or mr-landforms, synthetic: 6 pairs
    or 2 images per landform) with model `name`; checks the record and the row count, returns
    the evaluation record."""
    from marseval.data.retrieval import standardize_retrieval
    from marseval.data.synthetic.retrieval import write_retrieval
    from marseval.registry import get_dataset
    from marseval.retrieval.embed import embed_shard
    from marseval.retrieval.evaluate import evaluate
    from marseval.retrieval.index import build_index
    from marseval.retrieval.queries import build_queries

    spec = get_dataset(dataset)
    write_retrieval(spec, folder / "raw", 0, 40, {"pairs": 6, "landform_images_per_class": 2})
    data = folder / "data"
    standardize_retrieval(folder / "raw", data, spec, "synthetic")
    done = embed_shard(data, name, 0, 1, folder / "shard", batch_size=4)
    build_index([folder / "shard"], folder / "index")
    queries = None
    if spec.subtask == "landform":
        queries = folder / "queries.npz"
        build_queries(data, name, queries, batch_size=4)
    record = evaluate(data, folder / "index", folder / "eval", model=name,
                      queries_path=queries)
    assert record["applicable"] and record["embedding_dim"] == dim
    classes = json.loads((data / "meta.json").read_text()).get("classes") or []
    assert done["rows"] == (6 if spec.subtask == "paired" else 2 * len(classes))
    return record
