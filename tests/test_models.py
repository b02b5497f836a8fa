"""Built-in models and model references."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import growc
from growc.errors import GrowcConfigError
from growc.models import CNN1d, ModelBuildError, WideResNet, default_input_shape, no_downloads, resolve_model


@pytest.mark.parametrize(("ref", "shape", "classes"), [("wrn-16-4", (2, 3, 32, 32), 10), ("cnn1d-8", (2, 1, 40), 10)])
def test_builtins_build_and_run(ref: str, shape: tuple[int, ...], classes: int) -> None:
    model = resolve_model(ref)
    assert default_input_shape(ref) == shape
    assert model(torch.randn(shape)).shape == (shape[0], classes)


def test_wrn_widths_follow_the_reference() -> None:
    model = resolve_model("wrn-28-10", num_classes=100)
    assert isinstance(model, WideResNet)
    assert model.conv1.out_channels == 16
    assert [
        model.block1[0].conv1.out_channels,
        model.block2[0].conv1.out_channels,
        model.block3[0].conv1.out_channels,
    ] == [160, 320, 640]
    assert len(model.block1) == 4 and model.fc.out_features == 100
    half = resolve_model("wrn-28-5")
    assert half.block3[0].conv2.out_channels == 320
    assert sum(p.numel() for p in model.parameters()) == 36_536_884  # WRN-28-10, CIFAR-100: 36.5M


def test_wrn_rejects_bad_depth() -> None:
    with pytest.raises(growc.GrowcConfigError, match=r"WRN depth must be 6n\+4 \(10, 16, 22, 28, ...\), got 12"):
        WideResNet(12, 2)


def test_module_factory_reference() -> None:
    model = resolve_model("growc.models:CNN1d", width=4, num_classes=3)
    assert isinstance(model, CNN1d) and model.fc.out_features == 3
    with pytest.raises(growc.GrowcConfigError, match=r"'growc\.models' has no attribute 'Nope'"):
        resolve_model("growc.models:Nope")
    with pytest.raises(growc.GrowcConfigError, match="cannot import 'no_such_pkg'"):
        resolve_model("no_such_pkg:f")


@pytest.mark.parametrize("depth", [18, 50])
def test_builtin_resnet_matches_torchvision_layout_and_scales_every_width(depth: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    ours = resolve_model(f"resnet-{depth}-1").state_dict()
    theirs = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    half = resolve_model(f"resnet-{depth}-0.5", num_classes=7)
    assert half.conv1.out_channels == 32 and half.fc.out_features == 7
    assert half(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert default_input_shape(f"resnet-{depth}-0.5") == (2, 3, 224, 224)


def test_resnet_rejects_bad_depth() -> None:
    with pytest.raises(growc.GrowcConfigError, match=r"ResNet depth must be one of \[18, 34, 50, 101, 152\], got 20"):
        resolve_model("resnet-20-1")


def test_a_factory_that_rejects_its_arguments_is_a_model_build_error() -> None:
    with pytest.raises(ModelBuildError, match=r"building 'cnn1d-4' failed: TypeError: .*unexpected keyword argument"):
        resolve_model("cnn1d-4", nope=1)


def test_every_torchvision_weights_argument_is_none_and_a_given_one_refused() -> None:
    pytest.importorskip("torchvision")
    with pytest.raises(
        GrowcConfigError, match=r"growc never downloads pretrained weights: leave kwargs.weights_backbone"
    ):
        resolve_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", weights_backbone="DEFAULT")
    with no_downloads("a test"):  # the default ImageNet backbone weights would be a download
        model = resolve_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    assert isinstance(model, nn.Module)


def test_no_downloads_stops_torch_hub_and_every_socket_and_restores_them() -> None:
    import _socket
    import socket

    import torch.hub

    before = (torch.hub.download_url_to_file, torch.hub.load_state_dict_from_url)
    with pytest.raises(GrowcConfigError, match=r"building a test tried to download 'https://example.invalid/w"):
        with no_downloads("a test"):  # each attempt is caught here, and the guard still refuses when it ends
            with pytest.raises(GrowcConfigError, match=r"building a test tried to download 'https://example.inv"):
                torch.hub.download_url_to_file("https://example.invalid/w", "/tmp/w")
            with pytest.raises(GrowcConfigError, match=r"tried to reach the network at 'example.invalid'"):
                socket.create_connection(("example.invalid", 80))
            raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)  # below the socket module's Python class
            with pytest.raises(GrowcConfigError, match=r"tried to reach the network at '127.0.0.1:9'"):
                raw.connect(("127.0.0.1", 9))
            raw.close()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with pytest.raises(GrowcConfigError, match=r"tried to reach the network at '127.0.0.1:9'"), udp:
                udp.sendto(b"x", ("127.0.0.1", 9))
    assert (torch.hub.download_url_to_file, torch.hub.load_state_dict_from_url) == before
    socket.getaddrinfo("localhost", 80)  # outside a guard nothing is stopped


@pytest.mark.parametrize("ref", [":", ".:x", "..nope:f"])
def test_a_reference_that_names_no_importable_module_is_a_config_error(ref: str) -> None:
    with pytest.raises(GrowcConfigError, match=rf"cannot import '.*' for model '{re.escape(ref)}'"):
        resolve_model(ref)
