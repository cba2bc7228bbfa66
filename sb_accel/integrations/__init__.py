"""Selective-Backprop inside other training frameworks, each behind an optional extra.

* :mod:`sb_accel.integrations.lightning`: ``SelectiveBackpropCallback`` for Lightning 2.x
  (``pip install 'sb-accel[lightning]'``).
* :mod:`sb_accel.integrations.huggingface`: ``SelectiveBackpropTrainer``, a Hugging Face
  ``Trainer`` subclass (``pip install 'sb-accel[hf]'``).

Both hand the framework an :class:`sb_accel.SelectiveLoader` planned for the run's epochs as its
training data: each yielded batch is one optimizer step of the framework's own loop, and every
epoch has the same, known number of them, so the step count the framework computes (and builds LR
schedules from) is the real one. Importing this package imports neither framework.
"""
