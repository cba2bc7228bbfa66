"""Selective-Backprop inside other training frameworks, each behind an optional extra.

* :mod:`sb_accel.integrations.lightning`: ``SelectiveBackpropCallback`` for Lightning 2.x
  (``pip install 'sb-accel[lightning]'``).
* :mod:`sb_accel.integrations.huggingface`: ``SelectiveBackpropTrainer``, a Hugging Face
  ``Trainer`` subclass (``pip install 'sb-accel[hf]'``).

Both hand the framework an :class:`sb_accel.SelectiveLoader` as its training data, so each yielded
batch is one optimizer step of the framework's own loop, and tell the framework the run's planned
step count so that LR schedules built from it complete. Importing this package imports neither
framework.
"""
