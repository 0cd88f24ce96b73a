"""Load the PVD reference's released generation checkpoints into the ``pvd-paper`` preset.

The reference (github.com/alexzhou907/PVD, ``train_generation.py``) saves
``{"epoch", "model_state", "optimizer_state"}`` with ``torch.save``; ``model_state`` is the
state_dict of its ``Model`` wrapper, whose ``model`` attribute is the PVCNN2 network wrapped in
DataParallel / DistributedDataParallel, so every key starts with ``model.module.``. The key
scheme below is read from the reference's module attribute names (``model/pvcnn_generation.py``,
``modules/*.py``); the real checkpoints were not available, so it is tested on a state_dict
fabricated with those names and shapes:

- ``embedf.{0,2}``: the time-embedding MLP's two Linear layers.
- ``sa_layers.{i}[.{k}]``: encoder level i, an ``nn.Sequential`` of PVConvs then the set
  abstraction (just the set abstraction, without ``.{k}``, at the level with no PVConv).
- PVConv ``voxel_layers.{0,1,4,5,6,7}``: Conv3d, GroupNorm, Conv3d, GroupNorm, Attention (its
  ``q, k, v, out`` 1x1 Conv3d and ``norm``; Swish, no parameters, when there is no attention), SE
  (``fc.0``, ``fc.2``); ``point_features.layers.{0,1}``: Conv1d and GroupNorm.
- set abstraction ``mlps.0.layers.{3j, 3j+1}``: Conv2d 1x1 and GroupNorm of MLP layer j.
- ``global_att.{q,k,v,out,norm}``: the bottleneck attention (1x1 Conv1d).
- ``fp_layers.{i}.0.mlp.layers.{3j, 3j+1}``: feature propagation MLP layer j (Conv1d, GroupNorm);
  ``fp_layers.{i}.{k >= 1}``: its PVConvs.
- ``classifier.0.layers.{0,1}``, ``classifier.2``: the head (Conv1d + GroupNorm, then Conv1d to 3).

1x1 convolution weights (out, in, 1, ...) become our Linear weights (out, in).
"""

from __future__ import annotations

import os
import re

import torch
from torch import Tensor

from pvd.nn.unet import PVDUNet, preset

_PREFIXES = ("model.module.", "module.", "model.")

_PVCONV = [
    (r"voxel_layers\.0\.", "conv1."),
    (r"voxel_layers\.1\.", "norm1.norm."),
    (r"voxel_layers\.4\.", "conv2."),
    (r"voxel_layers\.5\.", "norm2.norm."),
    (r"voxel_layers\.6\.", "attention."),
    (r"voxel_layers\.7\.fc\.", "se.fc."),
    (r"point_features\.layers\.0\.", "point.layers.0.linear."),
    (r"point_features\.layers\.1\.", "point.layers.0.norm.norm."),
]


def _mlp_key(rest: str) -> str:
    """``layers.{3j}.w`` -> ``layers.{j}.linear.w``; ``layers.{3j+1}.w`` -> ``layers.{j}.norm.norm.w``."""
    m = re.fullmatch(r"layers\.(\d+)\.(weight|bias)", rest)
    if m is None or int(m.group(1)) % 3 == 2:
        raise KeyError(rest)
    j, kind = divmod(int(m.group(1)), 3)
    return f"layers.{j}.{'linear' if kind == 0 else 'norm.norm'}.{m.group(2)}"


def _pvconv_key(rest: str) -> str:
    for pattern, target in _PVCONV:
        if re.match(pattern, rest):
            return target + rest[re.match(pattern, rest).end():]
    raise KeyError(rest)


def reference_key(key: str) -> str:
    """Our parameter name for one reference state_dict key (prefixes already stripped)."""
    m = re.fullmatch(r"embedf\.(0|2)\.(weight|bias)", key)
    if m:
        return f"time.mlp.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"global_att\.(q|k|v|out|norm)\.(weight|bias)", key)
    if m:
        return f"global_attention.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"classifier\.0\.layers\.(0|1)\.(weight|bias)", key)
    if m:
        return f"head.layers.0.{'linear' if m.group(1) == '0' else 'norm.norm'}.{m.group(2)}"
    m = re.fullmatch(r"classifier\.2\.(weight|bias)", key)
    if m:
        return f"head_out.{m.group(1)}"
    m = re.fullmatch(r"sa_layers\.(\d+)\.(?:(\d+)\.)?(.*)", key)
    if m:
        level, k, rest = m.groups()
        if rest.startswith("mlps.0."):
            return f"down.{level}.sa.mlp.{_mlp_key(rest[len('mlps.0.'):])}"
        return f"down.{level}.convs.{k}.{_pvconv_key(rest)}"
    m = re.fullmatch(r"fp_layers\.(\d+)\.(?:(\d+)\.)?(.*)", key)
    if m:
        level, k, rest = m.groups()
        if rest.startswith("mlp."):
            return f"up.{level}.fp.mlp.{_mlp_key(rest[len('mlp.'):])}"
        return f"up.{level}.convs.{int(k) - 1}.{_pvconv_key(rest)}"
    raise KeyError(key)


def convert_reference_state_dict(state: dict[str, Tensor], model: PVDUNet) -> dict[str, Tensor]:
    """Rename and reshape a reference state_dict (or a whole checkpoint) for ``model``.

    Raises KeyError naming any key that has no counterpart, and ValueError on a shape mismatch;
    ``model.load_state_dict(result)`` then also checks that nothing is missing.
    """
    if "model_state" in state:
        state = state["model_state"]
    ours = model.state_dict()
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        try:
            name = reference_key(key)
        except KeyError:
            raise KeyError(f"reference key {key!r} has no counterpart in pvd-paper") from None
        if name not in ours:
            raise KeyError(f"reference key {key!r} maps to {name!r}, which this model lacks")
        target = ours[name].shape
        if value.numel() != ours[name].numel():
            raise ValueError(f"{key!r}: shape {tuple(value.shape)} does not fit {name!r} {tuple(target)}")
        out[name] = value.reshape(target)
    return out


def load_reference_checkpoint(path: str | os.PathLike, model: PVDUNet | None = None) -> PVDUNet:
    """A ``pvd-paper`` network (or ``model``) with the weights of a reference ``.pth`` file.

    Loaded with ``weights_only=True``: nothing in the file is executed.
    """
    model = model if model is not None else PVDUNet(preset("pvd-paper"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert_reference_state_dict(state, model), strict=True)
    return model
