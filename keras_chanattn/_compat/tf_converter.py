"""TFLite converter internals: calibrate without quantising, then quantise with a deny-list.

Full-int8 export widens calibrated ranges before quantisation and keeps declared ops in
float; `tf.lite.TFLiteConverter` has no public API for either step, so this goes the way
`tf.lite.experimental.QuantizationDebugger` does.
"""


def calibrate_only(converter):
    """Runs `converter` (set up for full int8, with a representative dataset) up to the
    calibration: the float flatbuffer with each activation's recorded (min, max)
    (`TFLiteConverter._experimental_calibrate_only`)."""
    converter._experimental_calibrate_only = True  # noqa: SLF001
    return converter.convert()


def quantize_calibrated(converter, calibrated, denylisted_nodes=()):
    """Quantises a `calibrate_only` flatbuffer to int8 with int8 input and output, keeping in
    float the ops whose output tensors are named in `denylisted_nodes`
    (`tensorflow.lite.python.convert.mlir_quantize`)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    return convert.mlir_quantize(
        calibrated,
        disable_per_channel=converter._experimental_disable_per_channel,  # noqa: SLF001
        input_data_type=tf.int8,
        output_data_type=tf.int8,
        denylisted_nodes=list(denylisted_nodes),
    )
