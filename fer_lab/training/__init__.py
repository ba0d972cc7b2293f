"""Training (03_train): inputs, augmentation, models, phased schedules and the resumable training loop."""

from fer_lab._native import import_tensorflow

# Before any module of this package loads Keras or TensorFlow: their C++ start-up lines stay out of outputs.
import_tensorflow()
