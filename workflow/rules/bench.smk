# Mars-Bench training stages (features, tune, select, train, collect) arrive with the
# classification, segmentation and detection issues. Nothing here pretends to run yet.
