"""NumPy building blocks of the reference implementations (float64, NHWC)."""

import numpy as np


def to_numpy(variable):
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable, np.float64)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def hard_sigmoid(x):
    return np.clip(x / 6.0 + 0.5, 0.0, 1.0)


GATES = {
    "sigmoid": sigmoid,
    "hard_sigmoid": hard_sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
}


def relu(x):
    return np.maximum(x, 0.0)


def batch_norm(z, bn, training, axis=0):
    """BatchNorm of `z` along every axis but the last, with a Keras BN layer's weights.

    Training mode normalises with the batch mean and biased variance (as PyTorch and
    Keras do); inference mode uses the moving statistics.
    """
    gamma, beta = to_numpy(bn.gamma), to_numpy(bn.beta)
    if training:
        axes = tuple(range(z.ndim - 1))
        mean, var = z.mean(axis=axes), z.var(axis=axes)
    else:
        mean, var = to_numpy(bn.moving_mean), to_numpy(bn.moving_variance)
    return (z - mean) / np.sqrt(var + bn.epsilon) * gamma + beta
