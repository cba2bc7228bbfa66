"""The ``sb-accel`` commands: the parser (:mod:`.parser`) and one module per command group; their
entry point, :func:`sb_accel.cli.main`, maps errors to the exit statuses defined here."""

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

CHECKPOINT_NAME = "checkpoint.pt"  # as sb_accel.train.checkpoint.CHECKPOINT_NAME (that module imports torch)
LOG_NAME = "log.jsonl"             # as sb_accel.reporting.runlog.LOG_NAME
