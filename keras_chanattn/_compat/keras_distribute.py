"""Keras 3's `fit` under `tf.distribute.MultiWorkerMirroredStrategy` with several workers.

Two reductions in Keras's TensorFlow trainer fail as soon as there are two workers (Keras
3.15, TensorFlow 2.21), on every worker, before the first step ends:

- Before training (and each `evaluate`) `Model._maybe_symbolic_build` averages a whole
  `(x, y)` batch across replicas with `strategy.reduce`, only to read its shapes, and the
  multi-worker `reduce` refuses a tuple of per-replica values ("Attempt to convert a value
  (PerReplica...) to a Tensor"). The replacement builds from this worker's first replica's
  batch: the same shapes, and no collective op.
- `reduce_per_replica` averages each step's logs with `strategy.reduce("MEAN", v, axis=0)`,
  which fails on the scalar losses and metrics ("Invalid reduction dimension 0 for input
  with 0 dimensions"). The replacement averages scalars across workers with `axis=None`
  and leaves everything else to Keras.

`prepare_multi_worker_fit` applies both. They rest on the private `Model._symbolic_build`,
`Model._maybe_symbolic_build` and the trainer module's `reduce_per_replica` and
`_collective_all_reduce_multi_worker`; `tests/test_multiworker.py` names them if a release
drops them.
"""

PRIVATE_NAMES = {
    "keras.Model": ("_maybe_symbolic_build", "_symbolic_build"),
    "keras.src.backend.tensorflow.trainer": (
        "reduce_per_replica",
        "_collective_all_reduce_multi_worker",
    ),
}


def missing_private_names():
    """The names in `PRIVATE_NAMES` that this Keras lacks (none, while the fix holds)."""
    import importlib

    import keras

    owners = {
        "keras.Model": keras.Model,
        "keras.src.backend.tensorflow.trainer": importlib.import_module(
            "keras.src.backend.tensorflow.trainer"
        ),
    }
    return [
        f"{owner}.{name}"
        for owner, names in PRIVATE_NAMES.items()
        for name in names
        if not hasattr(owners[owner], name)
    ]


def prepare_multi_worker_fit(model, strategy):
    """Lets `model.fit`/`evaluate` run under a multi-worker `strategy` (see the module
    docstring). `model` must have been created under `strategy.scope()`."""
    _use_local_batch_for_build(model, strategy)
    _reduce_scalar_logs_across_workers()
    return model


def _use_local_batch_for_build(model, strategy):
    import tensorflow as tf

    def first_local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(first_local, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build


def _reduce_scalar_logs_across_workers():
    """Replaces the trainer's `reduce_per_replica` once per process (see the module
    docstring); single-worker strategies still get Keras's own."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    keras_reduce = trainer.reduce_per_replica
    if getattr(keras_reduce, "scalar_fix", False):
        return

    def is_scalar(value, strategy):
        if isinstance(value, tf.distribute.DistributedValues):
            value = strategy.experimental_local_results(value)[0]
        return getattr(value, "shape", None) is not None and value.shape.rank == 0

    def reduce_per_replica(values, strategy, reduction):
        multi_worker = trainer._collective_all_reduce_multi_worker(strategy)
        if not multi_worker or reduction not in ("auto", "mean"):
            return keras_reduce(values, strategy, reduction)

        def reduce(value):
            if is_scalar(value, strategy):
                return strategy.reduce("MEAN", value, axis=None)
            return keras_reduce(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    reduce_per_replica.scalar_fix = True
    trainer.reduce_per_replica = reduce_per_replica
