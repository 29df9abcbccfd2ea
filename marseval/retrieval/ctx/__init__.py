"""The geo-localization database from the Murray Lab global CTX mosaic (V01).

catalog     which 4-degree CTX tiles a run needs, their names and groups (one job per group)
fetch       download a group's tile archives, extract and verify the mosaic GeoTIFFs
vrt         a GDAL VRT over a group's tiles: the index the cutting job reads
cells       0.2-degree cells warped from each tile as the reference, written as tar shards
"""
