"""RunLog (the one record every report reads) and the reports built on it."""
from .runlog import Run, RunLog, load_run, read_events

__all__ = ["RunLog", "Run", "load_run", "read_events"]
