"""Mars-Bench segmentation: smp models with frozen encoders, image/mask data, losses,
IoU and Dice scoring."""
