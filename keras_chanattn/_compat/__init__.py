"""The only place that touches private TensorFlow, Keras and LiteRT APIs.

One small module per library. Each wraps the private names it needs behind a public function
and is covered by a test in `tests/test_compat.py` that names the API if a release removes it.
"""
