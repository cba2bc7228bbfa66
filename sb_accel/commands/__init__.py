"""The ``sb-accel`` commands: the parser (:mod:`.parser`) and one module per command group; their
entry point, :func:`sb_accel.cli.main`, maps errors to the exit statuses defined here."""

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

