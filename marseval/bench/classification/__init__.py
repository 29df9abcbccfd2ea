"""Mars-Bench classification: backbones and heads, images and targets, feature cache,
losses, metrics."""
