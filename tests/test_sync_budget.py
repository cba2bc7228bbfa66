"""The sync budget, enforced on the CPU on the real loop: how often each strategy would block the host
on a GPU, per candidate batch.

The Trainer (loader, augmentation, selection driver, batchers, timer, divergence guard, logger) and
the drop-in API run through real epochs on a stand-in CUDA device (:mod:`_sync_harness`: the method
by which tensors count as "on the device", and what counts as a sync, is in its docstring), for every
strategy, single-process and on two DDP ranks (gloo, with the collectives' tensors on the stand-in
device as NCCL has them). Every sync is recorded with its call site; a candidate batch over its
budget fails the test with the call site of every sync it made.

The budget (:data:`BUDGET`, the one place it lives), per candidate batch outside periodic reads
(log intervals, evaluation, epoch ends, checkpoints), by what the epoch asks of the policy:

* every candidate kept (Traditional, priming epochs; ``policy.keeps_all``): 0;
* a selecting epoch of SB, Kath18, InfoBatch, or a Stale-SB that asks for all or none: 1 (how many
  were kept: it decides whether a training step is due);
* a per-example forward mask (Stale-SB with per-example ages): 3 (the mask, the cached candidates'
  keep, the keep of a full selection batch of the others);
* under DDP: 1 more (the ranks' agreement on how many steps all of them can take).

Each fix the budget stands on was removed once and the test failed, naming the site: normalize()'s
pageable constant copies, the all-kept fast path, the batcher's pageable row copies, the pinned
copies of ``to_device`` on any accelerator, the forward mask read twice, the DDP readiness count's
pageable copy.
"""
import contextlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _sync_harness import STAND_IN, StandInDevice, candidates_counted
from sb_accel import SelectiveBackprop
from sb_accel.config import TrainConfig
from sb_accel.data import synthetic_dataset
from sb_accel.data.loader import CandidateLoader
from sb_accel.data.augment import AUGMENT_PRESETS
from sb_accel.train import Trainer
from sb_accel.train import trainer as trainer_module
from sb_accel.train.divergence import DivergenceGuard
from sb_accel.train.learner import build_model
from sb_accel.train.progress import DistributedRunLogger, RunLogger

STRATEGIES = ("traditional", "sb", "stale-sb", "kath18", "infobatch")

# Syncs allowed per candidate batch, by what the epoch asks of the policy; DDP adds DDP_EXTRA.
BUDGET = {
    "all kept": 0,               # Traditional, priming epochs, InfoBatch's annealing epochs: nothing to read
    "selecting": 1,              # how many were kept (it decides whether a training step is due)
    "per-example forwards": 3,   # a forward mask (the mask, the cached candidates' keep, a full selection batch's keep)
}
DDP_EXTRA = 1                    # the ranks' agreement on how many steps all of them can take

EPOCHS = 4


def epoch_kind(policy, epoch: int) -> str:
    """What ``epoch`` asks of ``policy`` (a key of :data:`BUDGET`), from the policy's own answers."""
    if policy.keeps_all(epoch):
        return "all kept"
    need = policy.requires_forward(torch.arange(4), epoch)
    return "selecting" if isinstance(need, bool) else "per-example forwards"


def _config(run_dir, strategy, **changes):
    base = dict(dataset="synthetic", model="small_cnn", width=4, epochs=EPOCHS, batch_size=16, lr=0.05,
                lr_schedule="constant", strategy=strategy, run_dir=str(run_dir), log_every_steps=8,
                progress=False, threads=1, augment="preset", history=64)
    return TrainConfig(**{**base, **changes})


def _data():
    data = synthetic_dataset(train=192, test=32)
    data.name = "cifar10"  # the CIFAR-10 augmentation preset: crop, flip and cutout run on the device
    return data


def as_on_cuda(trainer: Trainer) -> None:
    """What the Trainer does on CUDA that a CPU-typed device does not ask for (the guard's check cadence)."""
    trainer.guard.check_every = trainer.cfg.log_every_steps


@contextlib.contextmanager
def periodic_reads(monkeypatch, harness):
    """Mark what runs at intervals and epoch ends as periodic (its reads are not per candidate batch)."""
    def wrap(owner, name):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            with harness.periodic():
                return original(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapped)

    for owner, name in [(RunLogger, "interval"), (DistributedRunLogger, "interval"), (DivergenceGuard, "check"),
                        (Trainer, "evaluate"), (Trainer, "_end_epoch"), (Trainer, "_save_checkpoint")]:
        wrap(owner, name)
    yield


def run_trainer(run_dir, strategy, monkeypatch, **changes):
    """A Trainer's fit() on the stand-in device; returns the harness and the trainer."""
    harness = StandInDevice()
    monkeypatch.setattr(trainer_module, "resolve_device", lambda name: STAND_IN)
    with periodic_reads(monkeypatch, harness), harness:
        trainer = Trainer(_config(run_dir, strategy, **changes), data=_data(), overwrite=True)
        harness.place(list(trainer.model.parameters()) + list(trainer.model.buffers()))
        as_on_cuda(trainer)
        epochs = []
        original = trainer.source.epoch

        def epoch(*args, **kwargs):
            epochs.append((epoch_kind(trainer.driver.policy, trainer.epoch), harness.batches))
            return original(*args, **kwargs)
        trainer.source.epoch = epoch
        with candidates_counted(harness, trainer.source):
            trainer.fit()
    return harness, trainer, epochs


def budget_problems(harness, epochs, extra=0):
    """Every candidate batch over its epoch's budget, with the call site of every sync it made."""
    bounds = [first for _, first in epochs[1:]] + [harness.batches]
    problems = []
    for epoch, ((kind, first), end) in enumerate(zip(epochs, bounds)):
        budget = BUDGET[kind] + extra
        over = harness.over_budget(budget, set(range(first, end)))
        if over:
            problems.append(f"epoch {epoch} ({kind}, budget {budget} per candidate batch):\n  " + "\n  ".join(over))
    return problems


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_trainer_stays_within_the_sync_budget(strategy, tmp_path, monkeypatch):
    harness, trainer, epochs = run_trainer(tmp_path, strategy, monkeypatch)
    assert harness.batches >= EPOCHS * 4 and trainer.step >= EPOCHS
    assert len(epochs) == EPOCHS and (strategy == "traditional") == all(k == "all kept" for k, _ in epochs)
    problems = budget_problems(harness, epochs)
    assert not problems, f"{strategy}: syncs over budget\n" + "\n".join(problems)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_drop_in_api_stays_within_the_sync_budget(strategy):
    """The README's few-line loop over the package's loader: the same budget."""
    harness = StandInDevice()
    data = _data()
    with harness:
        torch.manual_seed(0)
        model = build_model(_config("unused", strategy), data.num_classes, data.in_channels).to(STAND_IN)
        harness.place(list(model.parameters()) + list(model.buffers()))
        loader = CandidateLoader(data, AUGMENT_PRESETS["cifar10"], STAND_IN, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        sb = SelectiveBackprop(model, strategy=strategy, batch_size=16, dataset_size=len(data.y_train),
                               epochs=EPOCHS, history=64, seed=0)
        epochs = []
        with candidates_counted(harness, loader):
            for epoch in range(EPOCHS):
                for x, y, idx in loader.epoch(16 * (3 if strategy == "kath18" else 1)):
                    if not epochs or epochs[-1][0] != epoch:
                        epochs.append((epoch, harness.batches - 1))
                    for xb, yb in sb.select(x, y, idx):
                        loss = sb.loss(F.cross_entropy(model(xb), yb, reduction="none"))
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
                        sb.step()
                with harness.periodic():  # the epoch's end: the policy's epoch hooks and deferred checks
                    for xb, yb in sb.new_epoch():
                        pass
        # the first select() checks the labels once and builds (and validates) the engine: set-up
        kinds = [(epoch_kind(sb.policy, epoch), first + (epoch == 0)) for epoch, first in epochs]
    assert sb.steps >= EPOCHS
    problems = budget_problems(harness, kinds)
    assert not problems, f"{strategy} (API): syncs over budget\n" + "\n".join(problems)


def _ddp_job(rank, run_dir, strategy):
    """One rank of a DDP Trainer on the stand-in device, the collectives' tensors there too (NCCL's way)."""
    from sb_accel.train import trainer as trainer_module  # noqa: F811 - the forkserver child's own import

    original = trainer_module.init_distributed

    def on_stand_in(device):
        group = original("cpu")
        group.device = group.comm_device = STAND_IN
        return group

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_module, "init_distributed", on_stand_in)
        harness, trainer, epochs = run_trainer(Path(run_dir), strategy, mp, epochs=2)
    return {"problems": budget_problems(harness, epochs, extra=DDP_EXTRA), "batches": harness.batches,
            "step": trainer.step}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ddp_adds_at_most_one_sync_per_candidate_batch(strategy, tmp_path):
    from test_distributed import run_ranks

    results = run_ranks(tmp_path, _ddp_job, str(tmp_path / "run"), strategy)
    for rank, result in enumerate(results):
        assert result["batches"] >= 8 and result["step"] >= 2
        assert not result["problems"], f"{strategy}, rank {rank}: syncs over budget\n" + "\n".join(result["problems"])


class _LossEngine:
    name = "test"

    def losses(self, x, y):
        return x.flatten(1).mean(1) + y.float()


class _Refresher:
    engine = _LossEngine()

    def after_step(self, model, step):
        return []


def test_a_forward_mask_read_once_is_not_asked_or_read_again():
    """A per-example forward mask that turns out all-stale or all-fresh costs its one read and the
    keep read: the driver hands what it read to the scoring instead of asking the policy again."""
    from sb_accel.selection import StaleSB
    from sb_accel.train import SelectionDriver

    harness = StandInDevice()
    with harness:
        policy = StaleSB(128, n=2, seed=0, history=256).to(STAND_IN)
        policy.observe(torch.arange(64, device=STAND_IN), torch.rand(64, device=STAND_IN), 0)  # 0..63 cached
        driver = SelectionDriver(policy, 16, _Refresher(), forward_batch_size=32)
        driver.start_epoch(1)
        for number, idx in enumerate([torch.arange(32), torch.arange(64, 96)]):  # all cached, then all fresh
            harness.candidate(number)
            harness.batches += 1
            x, y = torch.randn(32, 3, 4, 4, device=STAND_IN), torch.randint(0, 10, (32,), device=STAND_IN)
            list(driver.train_batches(x, y, idx))
        harness.candidate(None)
    assert driver.forwards == 32
    over = harness.over_budget(2)
    assert not over, "\n".join(over)
