"""Command line: ``sb-accel train | demo | profile | compare | report | list-models | list-engines | list-strategies | completion``.

Exit status (every error the CLI gives, with its fix: docs/ERRORS.md):

* 0: success;
* 1: a runtime failure: an engine that cannot be built or fails validation, a diverged run, a file
  that cannot be written (:class:`~sb_accel.files.StorageError`);
* 2: a usage, config or data error, argparse's own included: ``ConfigError``, ``DataError`` and
  the other ``ValueError``\\ s, a named path that does not exist;
* 130: interrupted (Ctrl-C); 143: terminated (SIGTERM). Both unwind normally, so a run's
  ``finally`` blocks run and its last checkpoint stays valid.

This module holds :func:`main`: dispatch, signals and the exit status. The parser and the commands
live in :mod:`sb_accel.commands`. Importing this module, ``--help`` and ``--version`` import no
torch: each command imports what it needs when it runs.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional, Tuple

from .commands import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_TERMINATED, EXIT_USAGE
from .commands.completion import cmd_completion
from .commands.listings import cmd_list_engines, cmd_list_models, cmd_list_strategies
from .commands.measurement import cmd_compare, cmd_profile, cmd_report
from .commands.parser import build_parser
from .commands.training import cmd_demo, cmd_train
from .config import CHECKPOINT_NAME
from .files import StorageError, os_error_fix

__all__ = ["main", "build_parser", "Terminated"]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM, so that ``finally`` blocks run
    (a run closes its log and keeps its last checkpoint). A ``KeyboardInterrupt``: code that handles
    Ctrl-C handles it too; :func:`main` exits with status 143."""


_HANDLERS = {"train": cmd_train, "demo": cmd_demo, "list-models": cmd_list_models, "list-engines": cmd_list_engines,
             "list-strategies": cmd_list_strategies,
             "profile": cmd_profile, "compare": cmd_compare, "report": cmd_report, "completion": cmd_completion}


# --- errors, signals, exit status -------------------------------------------------------------------
def _error(message: object) -> None:
    print(f"sb-accel: error: {message}", file=sys.stderr)


def _os_error(exc: OSError) -> str:
    """An error of the file system as one line: the path, what happened, what to do."""
    if isinstance(exc, StorageError) or exc.filename is None:
        return str(exc.strerror or exc)
    return f"{exc.filename}: {exc.strerror or exc} ({os_error_fix(exc)})"


def _torchrun_world() -> Tuple[int, int]:
    """``(WORLD_SIZE, LOCAL_WORLD_SIZE)`` under torchrun, ``(1, 1)`` in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def _resume_command(run_dir: str) -> str:
    """The command that resumes ``run_dir``: a run of N processes resumes with N processes."""
    world, local = _torchrun_world()
    if world == 1:
        launch = "sb-accel"
    elif world == local:
        launch = f"torchrun --standalone --nproc-per-node {local} -m sb_accel"
    else:
        launch = (f"torchrun --nnodes {world // local} --nproc-per-node {local} <the same rendezvous options> "
                  "-m sb_accel")
    return f"{launch} train --run-dir {run_dir} --resume"


def _left_behind(run_dir: str) -> str:
    """What a stopped run leaves behind: a checkpoint to resume from (and the command), or none yet."""
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if checkpoint.is_file():
        return (f"the checkpoint of the last finished epoch is kept in {checkpoint}: continue with "
                f"{_resume_command(run_dir)}")
    return (f"no checkpoint was written yet in {run_dir} (none is written before the first epoch ends, or with "
            "--no-checkpoint): start again, with --overwrite to replace its log")


def _stopped(what: str, run_dir: Optional[str]) -> str:
    """The message of an interrupted command."""
    return f"sb-accel: {what}" if run_dir is None else f"sb-accel: {what}; {_left_behind(run_dir)}"


def _first_rank() -> bool:
    """Whether this process speaks for the job: always, except on torchrun's ranks other than 0
    (every rank sees the same interruption; one message is enough)."""
    return os.environ.get("RANK", "0") == "0"


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


class _SigtermRaises:
    """While active (main thread only), SIGTERM raises :class:`Terminated`; the old handler is restored after."""

    def __enter__(self) -> "_SigtermRaises":
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns its exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits with 2
    args.active_run_dir = None  # the run a command is training, for the interruption message
    with _SigtermRaises():
        try:
            return _HANDLERS[args.command](args)
        except Terminated:
            if _first_rank():
                print(_stopped("terminated (SIGTERM)", args.active_run_dir), file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            if _first_rank():
                print(_stopped("interrupted", args.active_run_dir), file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. `sb-accel list-engines | head`: the reader left, nothing to report
            # Point stdout at /dev/null so the interpreter's final flush does not raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_RUNTIME
        except (ValueError, FileNotFoundError) as exc:  # ConfigError, DataError, bad values, missing inputs
            _error(exc)
            return EXIT_USAGE
        except OSError as exc:  # a file that cannot be written (StorageError names it), or another I/O error
            _error(_os_error(exc))
            return EXIT_RUNTIME
        except RuntimeError as exc:  # EngineError; under torchrun also a rank that died (its peers' collectives fail)
            _error(_with_resume_advice(exc, args.active_run_dir))
            return EXIT_RUNTIME
        except FloatingPointError as exc:  # divergence: the message says what to try
            _error(exc)
            return EXIT_RUNTIME


def _with_resume_advice(exc: RuntimeError, run_dir: Optional[str]) -> str:
    """Under torchrun, a training job's failure (typically a peer rank that died) with how to resume
    it, said by rank 0 (the other ranks name their error only)."""
    if run_dir is None or _torchrun_world()[0] == 1 or not _first_rank():
        return str(exc)
    what = " ".join(str(exc).split())  # collective errors span lines: the advice must stay on the same one
    return f"this torchrun job stopped: {what}; {_left_behind(run_dir)}"


if __name__ == "__main__":
    sys.exit(main())
