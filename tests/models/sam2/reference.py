"""Test helpers: Meta's sam2 reference models with seeded random weights, saved in the real
checkpoint format, and a stand-in for the three torchvision transforms its image predictor uses
(torchvision is not a dependency; the stand-ins follow torchvision's tensor code paths)."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

from segzero_jax.models.sam2.config import Sam2Config, meta_hydra_overrides
from tests.tolerance import assert_parity

TINY_CONFIG_FILE = "configs/sam2/sam2_hiera_t.yaml"


def import_image_predictor():
    """Meta's `SAM2ImagePredictor` class. Without torchvision, its transforms module is imported
    against stand-ins that are removed from `sys.modules` right after, so other libraries'
    "is torchvision installed?" checks are not misled."""
    import importlib.util

    if "sam2.sam2_image_predictor" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        return SAM2ImagePredictor
    sys.modules.update(_torchvision_stand_ins())
    try:
        from sam2.sam2_image_predictor import SAM2ImagePredictor
    finally:
        for name in ("torchvision.transforms", "torchvision"):
            sys.modules.pop(name, None)
    return SAM2ImagePredictor


def _torchvision_stand_ins() -> dict:
    """`torchvision.transforms.{ToTensor, Resize, Normalize}` following torchvision's tensor paths."""

    class ToTensor:
        def __call__(self, pic):
            arr = np.asarray(pic)
            t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            return t.to(torch.float32).div(255) if arr.dtype == np.uint8 else t

    class Resize(torch.nn.Module):
        """torchvision Resize on a float tensor: bilinear, align_corners=False, antialias=True."""

        def __init__(self, size):
            super().__init__()
            self.size = [int(s) for s in size]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False,
                                 antialias=True)[0]

    class Normalize(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.mean = [float(m) for m in mean]
            self.std = [float(s) for s in std]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = torch.tensor(self.mean, dtype=x.dtype)[:, None, None]
            std = torch.tensor(self.std, dtype=x.dtype)[:, None, None]
            return (x - mean) / std

    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    tr.ToTensor, tr.Resize, tr.Normalize = ToTensor, Resize, Normalize
    tv.transforms = tr
    return {"torchvision": tv, "torchvision.transforms": tr}


def build_reference(cfg: Sam2Config | None, seed: int, config_file: str = TINY_CONFIG_FILE,
                    overrides: bool = True) -> torch.nn.Module:
    """Meta's SAM2Base from its own hydra config (with `cfg`'s architecture when `overrides`),
    eval mode, every float param and buffer perturbed by seeded noise."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    model = build_sam2(config_file, ckpt_path=None, device="cpu",
                       hydra_overrides_extra=meta_hydra_overrides(cfg) if overrides else [])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_checkpoint(model: torch.nn.Module, directory: str) -> str:
    """Writes `{"model": state_dict}` like Meta's released `sam2_hiera_*.pt`."""
    path = os.path.join(directory, "sam2_random.pt")
    torch.save({"model": model.state_dict()}, path)
    return path


def reference_predictor(model, cfg):
    """Meta's SAM2ImagePredictor; its feature-size table follows `cfg.image_size`."""
    pred = import_image_predictor()(model)
    s = cfg.image_size // 4
    pred._bb_feat_sizes = [(s, s), (s // 2, s // 2), (s // 4, s // 4)]
    return pred


def assert_close(ours, theirs, what):
    """Float32 parity with the reference, relative to its scale (`tests.tolerance`)."""
    assert_parity(ours, theirs, what)


def assert_masks_agree(ours, theirs, what, min_agree=0.999):
    """The reference returns 0/1 floats; ours are booleans."""
    theirs = np.asarray(theirs) > 0.5
    assert ours.dtype == bool and ours.shape == theirs.shape, (what, ours.dtype, ours.shape, theirs.shape)
    agree = (ours == theirs).mean()
    assert agree >= min_agree, f"{what}: {agree:.5f} pixel agreement"
    assert 0.0 < theirs.mean() < 1.0, f"{what}: degenerate reference mask"
