"""ResNet18/50/152 in plain torch (He et al., 2015), with torchvision's parameter names.

Keeping torchvision's ``state_dict`` keys and shapes means ImageNet weights a user already has on disk load
unchanged (``model.weights=/path/to/resnet18.pth``). This module knows nothing of data or tracking.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from leukemia.errors import UserError


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or projected) shortcut; used by ResNet18/34."""

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int = 2):
        super().__init__()
        self.in_channels = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_stage(block, 64, layers[0], stride=1)
        self.layer2 = self._make_stage(block, 128, layers[1], stride=2)
        self.layer3 = self._make_stage(block, 256, layers[2], stride=2)
        self.layer4 = self._make_stage(block, 512, layers[3], stride=2)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self._init_weights()

    def _make_stage(self, block: type[BasicBlock | Bottleneck], width: int, blocks: int, stride: int):
        downsample = None
        if stride != 1 or self.in_channels != width * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.in_channels, width * block.expansion, stride),
                nn.BatchNorm2d(width * block.expansion),
            )
        stage = [block(self.in_channels, width, stride, downsample)]
        self.in_channels = width * block.expansion
        stage += [block(self.in_channels, width) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # Global average pooling as a mean: unlike AdaptiveAvgPool2d's, its CUDA backward is deterministic.
        return self.fc(x.mean(dim=(2, 3)))


ARCHITECTURES: dict[int, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    50: (Bottleneck, [3, 4, 6, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}


def resnet(depth: int, num_classes: int = 2) -> ResNet:
    if depth not in ARCHITECTURES:
        raise UserError(f"model.depth={depth} is not supported; choose one of {sorted(ARCHITECTURES)}")
    block, layers = ARCHITECTURES[depth]
    return ResNet(block, layers, num_classes)


def build_model(depth: int, num_classes: int = 2, weights: str | Path | None = None) -> ResNet:
    """A ResNet of the given depth, optionally started from a torchvision-format state_dict on disk."""
    model = resnet(depth, num_classes)
    if weights:
        load_pretrained(model, weights, f"resnet{depth}")
    return model


def read_state_dict(path: str | Path, key: str) -> dict[str, Tensor]:
    """A state_dict from disk, never unpickling code (``weights_only=True``); ``key`` names the setting in
    error messages (``model.weights``, ``weights``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}={path}: no such file; give a .pt/.pth state_dict saved with torch.save")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a state_dict
        raise UserError(f"{key}={path}: not a loadable state_dict ({error.__class__.__name__})") from error
    if not isinstance(state, dict):
        raise UserError(f"{key}={path}: holds a {type(state).__name__}, expected a state_dict")
    return state


def _misfits(model: ResNet, state: dict[str, Tensor], head: bool) -> list[str]:
    """Keys missing, extra or of another shape (the ``fc.`` head only when ``head``)."""
    own = model.state_dict()
    misfits = [key for key in state if key not in own or state[key].shape != own[key].shape]
    return misfits + [key for key in own if key not in state and (head or not key.startswith("fc."))]


def load_pretrained(model: ResNet, path: str | Path, model_name: str) -> None:
    """Start from a torchvision-format state_dict; the head stays fresh when its class count differs."""
    state = read_state_dict(path, "model.weights")
    if "fc.weight" in state and state["fc.weight"].shape != model.fc.weight.shape:
        state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    misfits = _misfits(model, state, head=False)
    if misfits:
        raise UserError(
            f"model.weights={path}: does not fit {model_name} ({len(misfits)} keys missing, extra or of "
            f"another shape, e.g. {misfits[:2]}); choose the model that matches the file"
        )
    model.load_state_dict(state, strict=False)


def load_trained(model: ResNet, state: dict[str, Tensor], source: str, model_name: str) -> None:
    """Load weights a run trained, exactly: the same depth and the same number of classes."""
    misfits = _misfits(model, state, head=True)
    if misfits:
        classes = state["fc.weight"].shape[0] if "fc.weight" in state else "?"
        raise UserError(
            f"{source}: does not fit {model_name} with {model.fc.out_features} classes (the file's head has "
            f"{classes}; {len(misfits)} keys missing, extra or of another shape, e.g. {misfits[:2]}); pass the "
            f"model=/model.num_classes= the weights were trained with"
        )
    model.load_state_dict(state)
