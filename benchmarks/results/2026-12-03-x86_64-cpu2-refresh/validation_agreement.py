"""How healthy and broken INT8 engines score under the refresher's validation (rank agreement,
relative error), over the first steps of training from scratch. The script that produced
validation_agreement_resnet18.txt next to it:

    PYTHONPATH=. python benchmarks/results/2026-12-03-x86_64-cpu2-refresh/validation_agreement.py \
        resnet18 40 int8 0,2,5,10,20,30,40

Arguments: model, SGD steps, engine precision, steps at which to check.
"""
import sys, copy, torch, torch.nn.functional as F
from sb_accel.data import load_dataset
from sb_accel.models import create_model
from sb_accel.engines import EngineContext, create_engine
from sb_accel.engines.torch_backend import TorchEngine
from sb_accel.engines.validation import rank_agreement, relative_error, rank_correlation
torch.manual_seed(0)
model_name, steps, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3]
checkpoints = [int(s) for s in sys.argv[4].split(",")]
data = load_dataset("cifar10")
n = 2048
x = data.normalize(data.x_train[:n]); y = data.y_train[:n]
model = create_model(model_name, num_classes=10, in_channels=3)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
samples = [(x[i:i+128], y[i:i+128]) for i in range(0, 512, 128)]
ctx = EngineContext(sample_batches=samples, cache_dir="engines/cache", options={"recalibrate_every": 0})
backend = "torch" if precision in ("bf16", "fp16") else "onnxruntime"
eng = create_engine(backend, model, ctx, precision) if backend == "onnxruntime" else None
vx, vy = x[:32], y[:32]
def stats(tag, got, ref):
    print(f"{tag:12s} refmean {ref.mean():.3g} max {ref.max():.3g} | agree {rank_agreement(got, ref):.3f} rel {relative_error(got, ref):.3g} rho {rank_correlation(got, ref):.3f} maxabs {(got-ref).abs().max():.3g}", flush=True)
for s in range(steps+1):
    if s in checkpoints:
        ref = TorchEngine(model).losses(vx, vy)
        if eng is None:
            stats(f"s{s} {precision}", TorchEngine(model, precision).losses(vx, vy), ref)
        else:
            eng.refresh(model); stats(f"s{s} cheap", eng.losses(vx, vy), ref)
            if precision == "int8":
                eng.refresh(model, rebuild=True); stats(f"s{s} full", eng.losses(vx, vy), ref)
        bad = copy.deepcopy(model)
        with torch.no_grad():
            for p in bad.parameters():
                if p.dim() > 1: p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))
        stats(f"s{s} perm", TorchEngine(bad).losses(vx, vy), ref)
        bad = copy.deepcopy(model)
        with torch.no_grad():
            for p in bad.parameters(): p.zero_()
        stats(f"s{s} zero", TorchEngine(bad).losses(vx, vy), ref)
        bad = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in bad.named_parameters():
                if name.endswith("bias"): p.zero_()
        stats(f"s{s} nobias", TorchEngine(bad).losses(vx, vy), ref)
    if s == steps: break
    i = (s*128) % n
    model.train(); loss = F.cross_entropy(model(x[i:i+128]), y[i:i+128]); opt.zero_grad(); loss.backward(); opt.step()
