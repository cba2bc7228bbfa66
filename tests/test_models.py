"""Model registry: every model builds and runs for 10/100 classes, RGB 32x32 and grey 28x28 inputs."""
import pytest
import torch
import torch.nn as nn

from sb_accel.models import count_parameters, create_model, list_models

# WRN-28-10 (36.5 M parameters) is only built, for its parameter count; the same class runs
# forward through the small "wrn" below.
FORWARD_SKIP = {"wrn-28-10"}
FORWARD_KWARGS = {"wrn": {"depth": 10, "widen_factor": 2}}
EXPECTED_MODELS = {"small_cnn", "resnet9", "resnet18", "resnet34", "wrn", "wrn-28-10", "mobilenetv2",
                   "densenet", "densenet121"}


def test_all_models_registered():
    assert EXPECTED_MODELS <= set(list_models())


@pytest.mark.parametrize("in_channels,size", [(3, 32), (1, 28)])
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", [n for n in list_models() if n not in FORWARD_SKIP])
def test_forward_shape(name, num_classes, in_channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels,
                         **FORWARD_KWARGS.get(name, {})).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name,low,high", [
    ("resnet18", 11.1e6, 11.3e6),
    ("wrn-28-10", 36.3e6, 36.7e6),
    ("small_cnn", 0.40e6, 0.42e6),
    ("densenet", 0.75e6, 0.82e6),  # DenseNet-BC-100, k=12: 0.8 M in the paper
])
def test_parameter_counts(name, low, high):
    assert low <= count_parameters(create_model(name)) <= high


def test_wrn_28_10_other_heads_and_inputs():
    # 90 more classes on a 640-wide head; the 16-channel 3x3 stem loses 2 input channels.
    base = count_parameters(create_model("wrn-28-10"))
    assert count_parameters(create_model("wrn-28-10", num_classes=100, in_channels=1)) == \
        base + 90 * (640 + 1) - 2 * 16 * 3 * 3


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "densenet121"])
def test_cifar_stem_ends_at_4x4(name):
    model = create_model(name).eval()
    pool = next(m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d))
    seen = []
    pool.register_forward_hook(lambda module, inputs, output: seen.append(tuple(inputs[0].shape[-2:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [(4, 4)]


def test_unknown_model_names_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet1000'") as info:
        create_model("resnet1000")
    for name in list_models():
        assert name in str(info.value)


@pytest.mark.parametrize("name,kwargs", [
    ("wrn", {"depth": 27}),
    ("wrn", {"depth": 4}),
    ("densenet", {"depth": 99}),
])
def test_bad_depth_raises(name, kwargs):
    with pytest.raises(ValueError, match=r"6n \+ 4"):
        create_model(name, **kwargs)
