# The geo-localization database from the Murray Lab CTX mosaic (marseval.retrieval.ctx):
# ctx_download (one group of 4-degree tiles, GeoTIFFs and a VRT over them) -> ctx_cells
# (the group's cells warped as the reference, one tar) -> embed (one shard per group).


rule ctx_download:
    """Fetch one group of CTX tiles: Murray Lab's archives, or the synthetic planet's."""
    input:
        CTX_ARCHIVE_INPUTS,
    output:
        CTX_GROUP_OUTPUT,
    log:
        f"{LOGS}/ctx_download/{CTX_SOURCE}/group{{group}}.log",
    conda:
        "../../envs/data.yaml"
    threads: JOBS.threads("ctx_download")
    resources:
        downloads=1,
        mem_mb=JOBS.mem_mb("ctx_download"),
        runtime=JOBS.runtime("ctx_download"),
    params:
        tiles=lambda wildcards: group_tiles(config, wildcards.group),
        source=CTX_ARCHIVES,
        workers=config["retrieval"]["ctx"]["download_workers"],
        retries=config["download"]["retries"],
        offline="--offline" if config["offline"] else "",
    shell:
        "python -m marseval ctx-download --tiles {params.tiles} --source {params.source:q}"
        " --out {output} --workers {params.workers} --retries {params.retries}"
        " {params.offline} > {log} 2>&1"


rule ctx_cells:
    """Cut one group of CTX tiles into the database cells (a tar and its cell table)."""
    input:
        f"{CTX_RAW}/group{{group}}",
    output:
        directory(f"{RESULTS}/retrieval/cells/group{{group}}"),
    log:
        f"{LOGS}/ctx_cells/group{{group}}.log",
    benchmark:
        f"{BENCHMARKS}/ctx_cells/group{{group}}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: JOBS.threads("ctx_cells")
    resources:
        mem_mb=JOBS.mem_mb("ctx_cells"),
        runtime=JOBS.runtime("ctx_cells"),
    params:
        tiles=lambda wildcards: group_tiles(config, wildcards.group),
        delta=config["retrieval"]["tile_delta"],
        pixels=config["retrieval"]["tile_pixels"],
        drop="--drop-empty" if config["retrieval"]["ctx"]["drop_empty"] else "",
    shell:
        "python -m marseval ctx-cells --group {input} --tiles {params.tiles}"
        " --out {output} --delta {params.delta} --pixels {params.pixels} {params.drop}"
        " --workers {threads} > {log} 2>&1"
