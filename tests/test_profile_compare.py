"""`sb-accel profile` and `sb-accel compare` end to end on tiny settings, plus their arithmetic."""
import json

import pytest
import torch

from sb_accel import measure
from sb_accel.cli import main
from sb_accel.compare import agreement, kept_mask
from sb_accel.config import TrainConfig
from sb_accel.engines import EngineError, list_engines
from sb_accel.profile import default_engines, predict_epoch_costs
from sb_accel.train import Trainer

ORT_SPECS = [s for s in list_engines() if s in ("onnxruntime-fp32", "onnxruntime-int8")]


def test_profile_cli_on_a_tiny_setting(tmp_path, capsys):
    out = tmp_path / "profile"
    rc = main(["profile", "--models", "small_cnn", "--batch-sizes", "16", "--repeats", "2", "--warmup", "1",
               "--dataset", "synthetic", "--precisions", "fp32", "bf16", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "bwd/fwd" in text and "predicted seconds per epoch" in text and "traditional" in text
    data = json.loads((out / "profile.json").read_text())
    train = [r for r in data["rows"] if r["kind"] == "train"]
    assert [r["name"] for r in train] == ["fp32", "bf16"]
    for r in train:
        for key in ("selection_ms", "train_forward_ms", "backward_ms", "optimizer_ms"):
            assert r[f"{key}_p25"] <= r[key] <= r[f"{key}_p75"] and r[key] > 0
        assert r["backward_over_forward"] > 0  # the ratio's arithmetic: test_profile_rows_on_scripted_timings
    engines = [r for r in data["rows"] if r["kind"] == "engine"]
    assert [r["name"] for r in engines] == default_engines()  # every other registered engine, once
    assert "torch-graph-fp16" in default_engines() and "torch-fp32" not in default_engines()
    assert all(r["per_example_us"] is not None for r in train + [r for r in engines if r["status"] == "ok"])
    assert all(r["selection_ms"] > 0 for r in engines if r["status"] == "ok")
    # the costs predict every measured option and nothing that could not be measured here
    assert {c["strategy"] for c in data["costs"]} == ({"traditional", "sb torch-fp32", "sb torch-bf16"}
                                                      | {f"sb {r['name']}" for r in engines if r["status"] == "ok"})
    assert (out / "profile.png").stat().st_size > 0 and (out / "profile.svg").is_file()


def test_profile_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["profile", "--models", "vgg99", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["profile", "--engines", "torch-int4", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "no precision 'int4'" in capsys.readouterr().err


def test_cost_model_on_hand_computed_numbers():
    """10 batches of 100; a training step takes 20 + 50 + 30 ms = 0.1 s, so Traditional takes 1 s."""
    base = {"model": "m", "batch": 100, "dataset_size": 1000}
    rows = [{**base, "kind": "train", "name": "fp32", "status": "ok", "selection_ms": 10.0,
             "train_forward_ms": 20.0, "backward_ms": 50.0, "optimizer_ms": 30.0},
            {**base, "kind": "engine", "name": "fast-int8", "status": "ok", "selection_ms": 4.0, "refresh_s": 0.5},
            {**base, "kind": "engine", "name": "live-fp32", "status": "ok", "selection_ms": 5.0, "refresh_s": None},
            {**base, "kind": "engine", "name": "gone-fp8", "status": "unavailable: no GPU"}]
    costs = {c["strategy"]: c for c in predict_epoch_costs(rows, selectivity=0.25)}
    assert set(costs) == {"traditional", "sb torch-fp32", "sb fast-int8", "sb live-fp32"}
    assert costs["traditional"]["epoch_s"] == pytest.approx(1.0) and costs["traditional"]["speedup"] == 1.0
    # 0.1 s of selection, a quarter of the steps: 0.35 s
    assert costs["sb torch-fp32"]["epoch_s"] == pytest.approx(0.35)
    assert costs["sb torch-fp32"]["speedup"] == pytest.approx(2.857, abs=1e-3)
    # 0.04 s of selection, 0.25 s of steps, 2.5 refreshes of 0.5 s (after each of 2.5 steps; none more at
    # the end: the last step's refresh took the same weights)
    int8 = costs["sb fast-int8"]
    assert (int8["selection_s"], int8["train_s"], int8["refresh_s"]) == pytest.approx((0.04, 0.25, 1.25))
    assert int8["epoch_s"] == pytest.approx(1.54) and int8["speedup"] == pytest.approx(0.649, abs=1e-3)
    # a live engine reads the training weights: never refreshed
    assert costs["sb live-fp32"]["refresh_s"] == 0.0 and costs["sb live-fp32"]["epoch_s"] == pytest.approx(0.30)
    every_2 = {c["strategy"]: c for c in predict_epoch_costs(rows, 0.25, refresh_every_steps=2)}
    assert every_2["sb fast-int8"]["refresh_s"] == pytest.approx(1.125)  # 1.25 + 1 refreshes
    epoch_end = {c["strategy"]: c for c in predict_epoch_costs(rows, 0.25, refresh_every_steps=0)}
    assert epoch_end["sb fast-int8"]["epoch_s"] == pytest.approx(0.79)  # one refresh, at the epoch end
    bigger = predict_epoch_costs(rows, 0.5, dataset_size=2000)
    assert bigger[0]["epoch_s"] == pytest.approx(2.0) and bigger[1]["epoch_s"] == pytest.approx(1.2)
    with pytest.raises(ValueError, match="selectivity"):
        predict_epoch_costs(rows, 0.0)
    with pytest.raises(ValueError, match="refresh_every_steps"):
        predict_epoch_costs(rows, 0.5, refresh_every_steps=-1)


def test_call_cost_fit_on_synthetic_timings():
    """cost(n) = a + b n recovered exactly from exact timings, and by least squares from noisy ones."""
    sizes = [32, 64, 128, 256, 512, 1024]
    a, b = measure.fit_call_cost(sizes, [0.0024 + 3.3e-6 * n for n in sizes])  # an H100-like engine
    assert a == pytest.approx(0.0024, rel=1e-9) and b == pytest.approx(3.3e-6, rel=1e-9)
    # symmetric errors around a line: least squares gives the line back
    a, b = measure.fit_call_cost([10, 10, 20, 20], [1.0 + 0.1, 1.0 - 0.1, 2.0 - 0.1, 2.0 + 0.1])
    assert (a, b) == pytest.approx((0.0, 0.1), abs=1e-12)
    a, b = measure.fit_call_cost([1, 2, 3], [2.0, 2.0, 5.0])  # hand-solved normal equations
    assert (a, b) == pytest.approx((0.0, 1.5), abs=1e-12)
    for sizes, seconds in (([64, 64], [1.0, 2.0]), ([64], [1.0]), ([32, 64], [1.0])):
        with pytest.raises(ValueError, match="distinct sizes"):
            measure.fit_call_cost(sizes, seconds)


def test_cost_model_scales_the_in_loop_time_by_the_per_call_fit():
    """The level comes from the in-loop selection time (10 ms per 100 examples), how it changes
    with the call size from the per-call fit f(n) = 2 ms + 5 us * n: calls of 250 cost
    f(250) / 250 = 13 us per example against f(100) / 100 = 25 us at the measured size, so 1000
    examples cost 1000 x 100 us x 13/25. A negative fitted a (noise) counts as 0."""
    base = {"model": "m", "batch": 100, "dataset_size": 1000}
    train = {**base, "kind": "train", "name": "fp16", "status": "ok", "selection_ms": 10.0,
             "train_forward_ms": 20.0, "backward_ms": 50.0, "optimizer_ms": 30.0,
             "call_overhead_ms": 2.0, "per_example_us": 5.0}
    graph = {**base, "kind": "engine", "name": "torch-graph-fp16", "status": "ok", "selection_ms": 1.0,
             "refresh_s": None, "call_overhead_ms": -0.1, "per_example_us": 3.0}
    costs = {c["strategy"]: c for c in predict_epoch_costs([train, graph], 0.25, selection_batch=250)}
    assert costs["sb torch-fp16"]["selection_s"] == pytest.approx(1000 * 100e-6 * 13 / 25)
    assert costs["sb torch-graph-fp16"]["selection_s"] == pytest.approx(1000 * 10e-6)  # no a: size-free
    default = {c["strategy"]: c for c in predict_epoch_costs([train], 0.25)}  # calls of the training batch
    assert default["sb torch-fp16"]["selection_s"] == pytest.approx(10 * 0.010)  # the in-loop time itself


def test_profile_rows_on_scripted_timings(synthetic, monkeypatch):
    """The profile's rows from timings scripted here, checked against numbers worked by hand: the
    training step's phases (medians and quartiles of three repeats, milliseconds) and their ratios,
    and the per-call fit of calls that take exactly 2 ms + 5 us per example."""
    import sb_accel.profile as profile_module
    from sb_accel.profile import profile_models, profile_tables

    steps = {"selection": [0.003, 0.001, 0.002], "train_forward": [0.002, 0.002, 0.004],
             "backward": [0.010, 0.005, 0.006], "optimizer": [0.001, 0.001, 0.001]}
    monkeypatch.setattr(profile_module, "time_phases", lambda step, device, repeats, warmup: steps)

    def one_call(engine, batches, device, repeats, warmup):
        n = len(batches[0][1])
        return [0.002 + 5e-6 * n] * repeats, torch.zeros(n)
    monkeypatch.setattr(measure, "selection_seconds", one_call)

    rows = profile_models(["small_cnn"], [16], ["fp32"], engines=[], data=synthetic, device="cpu", repeats=3,
                          warmup=1, call_sizes=[8, 16, 32])
    (row,) = rows
    assert row["model"] == "small_cnn" and row["name"] == "fp32"
    # sorted backward times 5, 6, 10 ms: median 6; quartiles interpolated halfway, 5.5 and 8
    assert (row["backward_ms"], row["backward_ms_p25"], row["backward_ms_p75"]) == pytest.approx((6.0, 5.5, 8.0))
    assert (row["train_forward_ms"], row["selection_ms"], row["optimizer_ms"]) == pytest.approx((2.0, 2.0, 1.0))
    assert row["backward_over_forward"] == pytest.approx(3.0)  # 6 ms / 2 ms
    assert row["selection_over_backward"] == pytest.approx(1 / 3)  # 2 ms / 6 ms
    # calls of 8, 16, 32 examples: 2.04, 2.08, 2.16 ms, a line of 2 ms + 5 us per example
    assert row["call_sizes"] == [8, 16, 32] and row["call_ms"] == pytest.approx([2.04, 2.08, 2.16])
    assert (row["call_overhead_ms"], row["per_example_us"]) == pytest.approx((2.0, 5.0))
    assert "call ms (a)" in profile_tables(rows, []) and "us/example (b)" in profile_tables(rows, [])


def test_kept_sets_use_the_same_draws():
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(512, generator=g)
    uniforms = torch.rand(512, generator=g, dtype=torch.float64)
    keep = kept_mask(losses, 64, 0.33, uniforms)
    assert 0.2 < keep.double().mean() < 0.45
    same = agreement(losses.clone(), losses, kept_mask(losses.clone(), 64, 0.33, uniforms), keep)
    assert same["jaccard"] == 1.0 and same["flipped"] == 0.0 and same["loss_max_abs"] == 0.0
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    reversed_losses = 1.0 - losses
    opposite = agreement(reversed_losses, losses, kept_mask(reversed_losses, 64, 0.33, uniforms), keep)
    assert opposite["spearman"] == pytest.approx(-1.0) and opposite["jaccard"] < 0.2 and opposite["flipped"] > 0.3


def test_compare_cli_quick_training(tmp_path, capsys, monkeypatch):
    def create_engine(spec, model, context):  # torch-fp16 "cannot be built here"
        if spec == "torch-fp16":
            raise EngineError("pretend: no fp16 kernels here")
        return real_create_engine(spec, model, context)

    real_create_engine = measure.create_engine
    monkeypatch.setattr(measure, "create_engine", create_engine)
    out = tmp_path / "compare"
    engines = ["torch-fp32", "torch-bf16", "torch-fp16"] + ORT_SPECS
    rc = main(["compare", "--model", "small_cnn", "--dataset", "synthetic", "--train-steps", "40", "--batch-size", "32",
               "--examples", "256", "--repeats", "2", "--engines", *engines, "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "trained here for 40 SGD steps" in text and "Spearman" in text
    assert "torch-fp16: unavailable: pretend: no fp16 kernels here" in text  # reported, not fatal
    rows = {r["engine"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert list(rows) == engines
    ref = rows["torch-fp32"]
    assert (ref["loss_max_abs"], ref["jaccard"], ref["flipped"]) == (0.0, 1.0, 0.0) and ref["examples"] == 256
    assert rows["torch-bf16"]["spearman"] > 0.9 and rows["torch-bf16"]["throughput"] > 0
    assert rows["torch-fp16"]["build_s"] is None and "spearman" not in rows["torch-fp16"]
    for spec in ORT_SPECS:  # onnxruntime is a dependency: these build on any machine
        r = rows[spec]
        assert r["status"] == "ok", r["status"]
        assert r["build_s"] > 0 and r["refresh_s"] > 0 and 0.0 <= r["jaccard"] <= 1.0
        if spec == "onnxruntime-fp32":
            assert r["loss_max_abs"] < 1e-3 and r["spearman"] > 0.99
    assert (out / "compare.png").stat().st_size > 0 and (out / "compare.svg").is_file()


def test_compare_cli_from_a_checkpoint(tmp_path, synthetic, capsys):
    cfg = TrainConfig(dataset="synthetic", model="small_cnn", width=4, epochs=1, batch_size=32, strategy="traditional",
                      run_dir=str(tmp_path / "run"), progress=False)
    Trainer(cfg, data=synthetic).fit()
    rc = main(["compare", "--checkpoint", str(tmp_path / "run"), "--examples", "128", "--batch-size", "32",
               "--repeats", "1", "--engines", "torch-fp32", "torch-bf16", "--out", str(tmp_path / "c"),
               "--json", str(tmp_path / "c.json")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "checkpoint.pt (step" in text
    assert [r["engine"] for r in json.loads((tmp_path / "c.json").read_text())["rows"]] == ["torch-fp32", "torch-bf16"]


def test_compare_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["compare", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    assert main(["compare", "--model", "vgg99", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["compare", "--selectivity", "0", "--dataset", "synthetic", "--out", str(tmp_path)]) == 2


def test_real_batches_at_different_offsets_are_disjoint_windows_of_one_order(synthetic):
    from sb_accel.measure import real_batch

    whole, labels = real_batch(synthetic, 40, torch.device("cpu"), torch.contiguous_format, seed=3)
    window, window_labels = real_batch(synthetic, 16, torch.device("cpu"), torch.contiguous_format, seed=3, offset=24)
    assert torch.equal(window, whole[24:]) and torch.equal(window_labels, labels[24:])
    with pytest.raises(ValueError, match="examples 24 to"):
        real_batch(synthetic, len(synthetic.y_train), torch.device("cpu"), torch.contiguous_format, offset=24)


@pytest.mark.gpu
@pytest.mark.parametrize("spec,fit_sizes,loop_sizes", [
    ("torch-fp16", (32, 64, 128, 256, 512, 1024), (96, 768)),
    ("torch-graph-fp16", (128, 256, 512, 1024), (256, 1024)),  # its buckets: smaller calls are padded
])
def test_gpu_per_call_fit_predicts_a_measured_loop_within_15_percent(spec, fit_sizes, loop_sizes):
    """The profile's cost model on a GPU: calls x a + examples x b vs the time of a real loop of calls."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from sb_accel.engines import EngineContext, create_engine
    from sb_accel.models import create_model

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model("resnet18").to(device, memory_format=torch.channels_last)
    x = torch.randn(1024, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (1024,), device=device)
    engine = create_engine(spec, model, EngineContext(device=device, sample_batches=[(x[:128], y[:128])],
                                                      max_batch=1024))
    fit = measure.call_costs(engine, x, y, fit_sizes, device, repeats=10, warmup=3)
    for n in loop_sizes:
        calls = 20
        for _ in range(3):
            engine.losses(x[:n], y[:n]).float().cpu()  # warm (a first call at a new shape plans cuDNN)
        measured = measure.synchronized_seconds(
            lambda: [engine.losses(x[:n], y[:n]).float().cpu() for _ in range(calls)], device)
        predicted = calls * fit["call_overhead_ms"] / 1e3 + calls * n * fit["per_example_us"] / 1e6
        assert abs(predicted - measured) <= 0.15 * measured, (spec, n, predicted, measured, fit)
