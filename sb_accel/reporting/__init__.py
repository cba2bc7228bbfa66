"""RunLog (the one record every report reads) and the reports built on it."""
from .metrics import (DIVERGED, FINISHED, TARGET_MULTIPLIERS, UNFINISHED, GroupSummary, RunGroup, TargetResult,
                      check_same_dataset, describe_status, epochs_in_budget, final_error, final_wall, group_runs,
                      group_status, pareto_frontier, run_status, speedup, speedup_table, summarize_group,
                      time_to_target)
from .report import Report, baseline_warning, build_report, choose_baseline, collect_run_dirs, load_runs
from .runlog import Run, RunLog, load_run, read_events

__all__ = ["RunLog", "Run", "load_run", "read_events", "TARGET_MULTIPLIERS", "RunGroup", "GroupSummary",
           "TargetResult", "final_error", "final_wall", "time_to_target", "speedup", "group_runs",
           "summarize_group", "speedup_table", "pareto_frontier", "Report", "build_report", "choose_baseline",
           "baseline_warning", "collect_run_dirs", "load_runs", "FINISHED", "UNFINISHED", "DIVERGED", "run_status",
           "group_status", "describe_status", "check_same_dataset", "epochs_in_budget"]
