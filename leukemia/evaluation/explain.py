"""Grad-CAM (captum's LayerGradCam) on the last block of ``layer4``: where in a cell the network looked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib import colormaps
from torch import nn

OUTCOMES = ("correct", "wrong")


def grad_cam(network: nn.Module, inputs: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """Heat maps (N, H, W) in [0, 1] of normalised ``inputs`` for each one's class in ``classes``: the ReLU of
    the gradient-weighted activations of ``network.layer4[-1]``, upsampled bilinearly, each scaled by its max."""
    network.eval()
    with torch.enable_grad():
        attribution = LayerGradCam(network, network.layer4[-1]).attribute(
            inputs, target=classes, relu_attributions=True
        )
        heat = LayerAttribution.interpolate(attribution, tuple(inputs.shape[-2:]), interpolate_mode="bilinear")
    heat = heat.detach().float().squeeze(1).cpu().numpy()
    peak = heat.reshape(len(heat), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A heat map (H, W in [0, 1]) over an RGB uint8 image (H, W, 3), in the jet colour map: uint8 (H, W, 3)."""
    colours = colormaps["jet"](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * image.astype(np.float64) + alpha * colours, 0, 255).astype(np.uint8)


def explained(
    network: nn.Module, pixels: torch.Tensor, normalise: Callable[[torch.Tensor], torch.Tensor], classes: np.ndarray
) -> np.ndarray:
    """Grad-CAM overlays (N, H, W, 3 uint8) of uint8 images ``pixels`` (N, 3, H, W), each for its class in
    ``classes``; ``normalise`` turns the images on the network's device into its input."""
    device = next(network.parameters()).device
    heat = grad_cam(network, normalise(pixels.to(device)), torch.as_tensor(classes, device=device))
    images = pixels.permute(0, 2, 3, 1).numpy()
    return np.stack([overlay(image, heat[k]) for k, image in enumerate(images)])


def showcase(probability_all: np.ndarray, targets: np.ndarray, predicted: np.ndarray) -> dict[tuple[int, str], int]:
    """Per true class, the index of its most confident correct cell and its most confident wrong one (by the
    probability of the class predicted), where there is one."""
    confidence = np.where(predicted == 1, probability_all, 1.0 - probability_all)
    chosen = {}
    for true_class in (0, 1):
        for outcome in OUTCOMES:
            hit = (predicted == true_class) if outcome == "correct" else (predicted != true_class)
            candidates = np.flatnonzero((targets == true_class) & hit)
            if len(candidates):
                chosen[(true_class, outcome)] = int(candidates[np.argmax(confidence[candidates])])
    return chosen
