"""Weight files read as data: safetensors and torch state dicts, with errors that name the file.

Checkpoints come from outside the project, so they are read with readers that cannot run code
(`safetensors`; `torch.load(..., weights_only=True)`, which refuses any pickled object other than
tensors and plain containers), and a missing, truncated or foreign file is reported with its
path and what is wrong instead of the reader's internal message.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: bf16 tensors read as numpy arrays)
import numpy as np
from safetensors import SafetensorError, safe_open


class WeightFileError(ValueError):
    """A weight file that is missing, damaged or not of the expected kind."""


@contextlib.contextmanager
def open_safetensors(file: str) -> Iterator:
    """`safe_open(file, framework="numpy")`, failures named: yields the handle."""
    if not os.path.isfile(file):
        raise FileNotFoundError(f"weight file {file!r} does not exist")
    try:
        handle = safe_open(file, framework="numpy")
    except (SafetensorError, OSError) as e:
        raise WeightFileError(f"{file}: not a readable safetensors file ({e})") from None
    with handle as f:
        yield f


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, as numpy arrays (bfloat16 kept)."""
    with open_safetensors(file) as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def read_torch_state_dict(file: str) -> dict[str, np.ndarray]:
    """A torch checkpoint's state dict (or the `"model"` entry of one) as float32 numpy arrays.

    Read with `weights_only=True`: a file holding other pickled objects is refused, not run.
    """
    import pickle

    import torch  # optional dependency: only needed for .pt files

    if not os.path.isfile(file):
        raise FileNotFoundError(f"weight file {file!r} does not exist")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is mostly advice to load unsafely; keep the line that says what it met
        found = re.search(r"(?:Trying to load )?[Uu]nsupported [^\n]*?(?=\. |\.?\n|\.?$)", str(e))
        why = found.group(0) if found else "refused by torch's weights-only unpickler"
        raise WeightFileError(f"{file}: not a checkpoint of tensors and plain containers, so it is "
                              f"not unpickled further ({why})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise WeightFileError(f"{file}: not a readable torch checkpoint, damaged or truncated "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, dict):
        raise WeightFileError(f"{file}: expected a state dict (or {{'model': state dict}}), "
                              f"got {type(ckpt).__name__}")
    return {k: v.detach().float().numpy() for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
