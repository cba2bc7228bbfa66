"""``sb-accel`` with one fault injected (used by test_faults.py): ``_faulty_run.py FAULT AT ARGS...``.

FAULT is one of ``kill-at-step``, ``sigint-at-step``, ``sigterm-at-step`` (after optimizer step AT),
``kill-in-atomic-write`` (SIGKILL half-way through the AT-th atomic file write),
``enospc-in-atomic-write`` (the AT-th atomic file write fails with ENOSPC) and ``fail-engine-build``.
"""
import errno
import os
import signal
import sys

from sb_accel import cli, files
from sb_accel.engines import EngineError, EngineRefresher
from sb_accel.train.trainer import Trainer


def main() -> int:
    fault, at, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    # A shell without job control starts children with SIGINT ignored; a user's Ctrl-C is not.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if fault.endswith("-at-step"):
        sig = {"kill": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}[fault.split("-")[0]]
        train_step = Trainer._train_step

        def step_then_signal(self, batch):
            train_step(self, batch)
            if self.step == at:
                os.kill(os.getpid(), sig)

        Trainer._train_step = step_then_signal
    elif fault.endswith("-in-atomic-write"):
        # The AT-th file written by sb_accel.files.atomic_write (1: config.json, 2: the initial
        # checkpoint, 3: epoch 0's) gets half its bytes, then the process dies or the disk is full.
        fdopen, calls = files.os.fdopen, [0]

        class Faulty:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                if fault.startswith("kill"):
                    self.f.write(bytes(data)[: len(data) // 2])
                    self.f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return self.f.__exit__(*exc)

        def faulty_fdopen(fd, *args, **kwargs):
            calls[0] += 1
            f = fdopen(fd, *args, **kwargs)
            return Faulty(f) if calls[0] == at else f

        files.os.fdopen = faulty_fdopen
    elif fault == "fail-engine-build":
        def fail(*args, **kwargs):
            raise EngineError("injected engine build failure")

        EngineRefresher.create = classmethod(lambda cls, *a, **k: fail())
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
