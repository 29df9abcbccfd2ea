"""Classification benchmark: backbones, datasets, feature cache, training, metrics."""
