"""How often a 2-rank DDP Stale-SB run asks for selection forwards on part of a candidate batch, and on how many rows.

    python benchmarks/ddp_partial_forwards.py        # 2 gloo processes on the CPU, about a minute

Under DDP such forwards run with their own candidate batch (train/scoring.py, ``regroup=False``)
instead of being gathered into full selection batches: gathering them would need the ranks to agree,
for every candidate batch of such an epoch, on how many parts each decides and of what sizes (one
more collective and host read each), since the loss-history gather and the lockstep agreement are
collectives with equal shapes on every rank. This counts what gathering would save: the candidate
batches with a partial forward mask and the rows in them, per rank (Stale-SB n=3, 4 epochs, 2000
synthetic examples, a global batch of 64: 1000 per rank leave 8 untrained after priming).
"""
import json
import tempfile
from datetime import timedelta
import torch, torch.distributed as dist, torch.multiprocessing as mp

def job(rank, init, out, changes):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2, timeout=timedelta(seconds=300))
    from sb_accel.config import TrainConfig
    from sb_accel.data import synthetic_dataset
    from sb_accel.train import Trainer
    from sb_accel.train import scoring
    stats = {"batches": 0, "partial": 0, "rows": 0, "by_epoch": {}}
    original = scoring.SelectionForwards.score
    def counted(self, x, y, idx, epoch):
        need = self.policy.requires_forward(idx, epoch)
        stats["batches"] += 1
        if not isinstance(need, bool) and 0 < int(need.sum()) < len(idx):
            stats["partial"] += 1; stats["rows"] += int(need.sum())
            stats["by_epoch"][epoch] = stats["by_epoch"].get(epoch, 0) + int(need.sum())
        yield from original(self, x, y, idx, epoch)
    scoring.SelectionForwards.score = counted
    cfg = TrainConfig(dataset="synthetic", model="small_cnn", width=4, epochs=4, batch_size=64, lr=0.05,
                      lr_schedule="constant", run_dir=f"{out}/run", log_every_steps=50, progress=False, threads=1,
                      strategy="stale-sb", stale_n=3, **changes)
    t = Trainer(cfg, data=synthetic_dataset(train=2000, test=128), overwrite=True)
    s = t.fit()
    stats["candidates"] = t.driver.candidates; stats["forwards"] = t.driver.forwards
    torch.save(stats, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()

if __name__ == "__main__":
    for changes in ({}, {"end_of_epoch": "drop"}):
        out = tempfile.mkdtemp()
        mp.start_processes(job, args=(f"{out}/init", out, changes), nprocs=2, start_method="spawn")
        print(json.dumps({"config": changes, "ranks": [torch.load(f"{out}/rank{r}.pt") for r in range(2)]}))
