"""Training (03_train): inputs, augmentation, models, phased schedules and the resumable training loop."""

from fer_lab._native import import_tensorflow, keras_backend

# Before any module of this package loads Keras or TensorFlow: their C++ start-up lines stay out of outputs.
# On another Keras backend (JAX on a GPU machine) TensorFlow is not needed, and often not installed.
if keras_backend() == "tensorflow":
    import_tensorflow()
