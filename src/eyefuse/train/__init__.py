"""Training: the loop (`engine`), losses (`losses`), checkpoints (`checkpoint`) and multi-GPU helpers
(`distributed`). Augmentation runs on the training device on whole batches (`eyefuse.data.augment`)."""
