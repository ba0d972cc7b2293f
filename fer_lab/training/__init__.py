"""Training (03_train): inputs, augmentation, models, phased schedules and the resumable training loop."""
