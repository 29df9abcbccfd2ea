"""Mars-Bench detection: torchvision and ultralytics detectors, image/box data, mAP scoring."""
