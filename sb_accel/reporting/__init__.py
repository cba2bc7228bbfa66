"""RunLog (the one record every report reads) and the reports built on it."""
from .grouping import (DIVERGED, FINISHED, UNFINISHED, RunGroup, check_same_dataset, describe_status, group_runs,
                       group_status, run_status)
from .metrics import (TARGET_MULTIPLIERS, GroupSummary, TargetResult, epochs_in_budget, final_error, final_wall,
                      pareto_frontier, speedup, speedup_table, summarize_group, time_to_target)
from .report import Report, baseline_warning, build_report, choose_baseline, collect_run_dirs, load_runs
from .runlog import REFRESH_KINDS, Run, RunLog, load_run, read_events, refresh_kind

__all__ = ["RunLog", "Run", "load_run", "read_events", "TARGET_MULTIPLIERS", "RunGroup", "GroupSummary",
           "TargetResult", "final_error", "final_wall", "time_to_target", "speedup", "group_runs",
           "summarize_group", "speedup_table", "pareto_frontier", "Report", "build_report", "choose_baseline",
           "baseline_warning", "collect_run_dirs", "load_runs", "FINISHED", "UNFINISHED", "DIVERGED", "run_status",
           "group_status", "describe_status", "check_same_dataset", "epochs_in_budget", "REFRESH_KINDS", "refresh_kind"]
