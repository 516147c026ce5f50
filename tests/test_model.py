from __future__ import annotations

import pytest
import torch
import torchvision

from tests.conftest import tiny_config
from vggexport.model import CFGS, VGG, ModelConfig, build_model, vgg11, vgg13, vgg16, vgg19
from vggexport.names import torchvision_name

CONV_COUNTS = {"A": 8, "B": 10, "D": 13, "E": 16}


@pytest.mark.parametrize("cfg", list(CFGS))
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("image_size", [32, 224])
def test_shapes(cfg: str, batch_norm: bool, image_size: int) -> None:
    model = build_model(tiny_config(cfg=cfg, batch_norm=batch_norm, image_size=image_size)).eval()
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == CONV_COUNTS[cfg]
    assert len(norms) == (CONV_COUNTS[cfg] if batch_norm else 0)
    out = model(torch.randn(2, 1, image_size, image_size))
    assert out.shape == (2, 10)
    side = image_size // 32
    assert model.classifier[0].in_features == convs[-1].out_channels * side * side


def test_paper_depths() -> None:
    # depth = conv layers + 3 fully connected layers
    assert {cfg: n + 3 for cfg, n in CONV_COUNTS.items()} == {"A": 11, "B": 13, "D": 16, "E": 19}
    assert torchvision_name("A", False) == "vgg11" and torchvision_name("E", True) == "vgg19_bn"


def test_classifier_is_not_upsampled_at_32() -> None:
    model = build_model(tiny_config(image_size=32))
    assert model.classifier[0].in_features == model.features[-4].out_channels  # 1x1 map, not 7x7


@pytest.mark.parametrize(("builder", "cfg"), [(vgg11, "A"), (vgg13, "B"), (vgg16, "D"), (vgg19, "E")])
def test_keyword_only_builders(builder, cfg: str) -> None:  # type: ignore[no-untyped-def]
    model = builder(batch_norm=True, width=0.0625, head=16)
    assert model.config.cfg == cfg and model.config.batch_norm
    with pytest.raises(TypeError, match="takes 0 positional arguments"):
        builder(True)


def test_init_matches_torchvision_recipe() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(width=0.5, head=256)).requires_grad_(False)
    linear = model.classifier[3]
    assert abs(float(linear.weight.std()) - 0.01) < 0.002
    assert float(linear.bias.abs().max()) == 0.0
    conv = model.features[0]
    fan_out = conv.out_channels * 9
    assert abs(float(conv.weight.std()) - (2 / fan_out) ** 0.5) < 0.3 * (2 / fan_out) ** 0.5


@pytest.mark.parametrize("bad, message", [
    ({"cfg": "C"}, "unknown cfg 'C'"),
    ({"image_size": 48}, "image_size must be a multiple of 32 and >= 32, got 48"),
    ({"image_size": 16}, "image_size must be a multiple of 32 and >= 32, got 16"),
    ({"mean": (0.1, 0.2)}, "mean and std need one value per input channel"),
    ({"class_names": ("a", "b")}, "class_names needs one name per class"),
])
def test_invalid_config(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**bad)


def test_config_round_trip() -> None:
    config = tiny_config(class_names=tuple("abcdefghij"))
    assert ModelConfig.from_dict(config.to_dict()) == config


TV_BUILDERS = {"A": torchvision.models.vgg11, "B": torchvision.models.vgg13,
               "D": torchvision.models.vgg16, "E": torchvision.models.vgg19}
TV_BN_BUILDERS = {"A": torchvision.models.vgg11_bn, "B": torchvision.models.vgg13_bn,
                  "D": torchvision.models.vgg16_bn, "E": torchvision.models.vgg19_bn}


@pytest.mark.parametrize("cfg", list(CFGS))
@pytest.mark.parametrize("batch_norm", [False, True])
def test_torchvision_state_dict_loads_and_matches(cfg: str, batch_norm: bool) -> None:
    torch.manual_seed(cfg.encode()[0] + batch_norm)
    theirs = (TV_BN_BUILDERS if batch_norm else TV_BUILDERS)[cfg](weights=None).eval()
    if batch_norm:  # non-trivial running stats, so a mis-mapped BN would show
        for module in theirs.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    ours = VGG(ModelConfig(cfg=cfg, batch_norm=batch_norm, in_channels=3, num_classes=1000, image_size=224,
                           head=4096, width=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_flip_average_is_the_mean_of_both_views_posteriors() -> None:
    torch.manual_seed(0)
    model = VGG(tiny_config(flip_average=True)).eval()
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        averaged = model(x)
        plain, mirrored = model.single_view(x), model.single_view(x.flip(-1))
        mirror_of_input = model(x.flip(-1))
    expected = (plain.softmax(-1) + mirrored.softmax(-1)) / 2
    torch.testing.assert_close(averaged.softmax(-1), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(averaged.exp().sum(-1), torch.ones(5), atol=1e-5, rtol=1e-5)  # log-probabilities
    torch.testing.assert_close(mirror_of_input, averaged, atol=1e-5, rtol=1e-5)  # mirror-invariant by design


def test_flip_average_only_at_inference() -> None:
    torch.manual_seed(0)
    model = VGG(tiny_config(flip_average=True, dropout=0.0))
    x = torch.randn(3, 1, 32, 32)
    model.train()
    assert model(x).shape == (3, 10)  # one view: training sees the mirror through augmentation instead
    torch.testing.assert_close(model(x), model.single_view(x))
