"""TensorFlow's op-determinism switch: public to turn on, private to read and turn off."""

from tensorflow.python.framework import config as _tf_config  # private: no public is/disable


def is_op_determinism_enabled():
    """Whether TensorFlow's op determinism is on."""
    return _tf_config.is_op_determinism_enabled()


def enable_op_determinism():
    """Turns op determinism on (the same call as `tf.config.experimental.enable_...`)."""
    _tf_config.enable_op_determinism()


def disable_op_determinism():
    """Turns op determinism off again; TensorFlow's public API has no such call."""
    _tf_config.disable_op_determinism()
