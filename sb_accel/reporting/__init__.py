"""RunLog (the one record every report reads) and the reports built on it."""
from .metrics import (TARGET_MULTIPLIERS, GroupSummary, RunGroup, TargetResult, final_error, final_wall,
                      group_runs, pareto_frontier, speedup, speedup_table, summarize_group, time_to_target)
from .report import Report, build_report, choose_baseline, collect_run_dirs, load_runs
from .runlog import Run, RunLog, load_run, read_events

__all__ = ["RunLog", "Run", "load_run", "read_events", "TARGET_MULTIPLIERS", "RunGroup", "GroupSummary",
           "TargetResult", "final_error", "final_wall", "time_to_target", "speedup", "group_runs",
           "summarize_group", "speedup_table", "pareto_frontier", "Report", "build_report", "choose_baseline",
           "collect_run_dirs", "load_runs"]
