# MarsRetrieval stages (embed, index, queries, evaluate) arrive with the retrieval issue.
# Nothing here pretends to run yet.
