"""Class activation maps: where in the photo the classifier found its class.

For a network that ends in global average pooling and one linear classifier, a class's logit is
the mean over positions of the classifier's weights applied to the last feature map. Applied
before the mean, the same product gives the class's evidence at each position of the map: the
class activation map (Zhou et al., 2016). It costs one small matrix product per photo, not a
backward pass, so the exported graph can carry it as an extra output.
"""

from __future__ import annotations

import torch
from torch import nn


def cam_unavailable(model: nn.Module, img_size: int) -> str | None:
    """Why ``model`` has no class activation maps, or None when it has them.

    Checked on the model's own numbers: the classifier must be one linear layer and, on the
    spatial mean of ``forward_features``, give exactly the model's logits (a norm or an
    attention pool after the feature map breaks that, and then the map would not explain the
    answer).
    """
    get = getattr(model, "get_classifier", None)
    classifier = get() if callable(get) else None
    if not isinstance(classifier, nn.Linear) or not hasattr(model, "forward_features"):
        return "its classifier is not one linear layer over pooled features"
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    x = x.to(classifier.weight.device)
    with torch.no_grad():
        feats = model.eval().forward_features(x)  # type: ignore[operator]
        if feats.ndim != 4:
            return f"its last features are tokens of shape {tuple(feats.shape[1:])}, not a map"
        if feats.shape[1] != classifier.in_features:
            return (
                f"its classifier reads {classifier.in_features} features, not the "
                f"{feats.shape[1]} channels of the last feature map (a layer sits between)"
            )
        if not torch.allclose(classifier(feats.mean((2, 3))), model(x), atol=1e-4, rtol=1e-3):
            return "its head does more than average-pool the feature map before the classifier"
    return None


def class_maps(classifier: nn.Linear, feats: torch.Tensor) -> torch.Tensor:
    """Every class's activation map: (N, C, h, w) features -> (N, classes, h, w) evidence."""
    return torch.einsum("nchw,kc->nkhw", feats, classifier.weight)
