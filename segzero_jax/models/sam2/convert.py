"""Checkpoint conversion: Meta's SAM2 `.pt` (`{"model": state_dict}`) or transformers'
`Sam2Model` safetensors -> our params dict.

Each mapping is one declarative table (`TABLE` for Meta's names, `HF_TABLE` for transformers'): (reference key regex, param path template,
transform). Templates may name `{block}` (a Hiera block index, resolved through the scan layout
to `segment_j` plus a stack index) and `{stack}` (a row of a stacked param such as one of the
four point embeddings or one hypernetwork MLP). Transforms only permute axes and then reshape
to the target's shape; `T@qkv` (Hiera's fused q/k/v projection) splits the tensor's first axis
in three and applies T to each third, which fills the param of template `{part}` = q, k, v
(a `Piece` of the tensor):

  linear   torch Linear weight [F, D]          -> [D, F]  (then e.g. [D, N, H])
  conv     torch Conv2d weight [O, I, kh, kw]  -> [kh, kw, I, O]  (1x1: [I, O])
  conv_t   torch ConvTranspose2d [I, O, kh, kw] -> [I, kh, kw, O]
  chw      [1, C, h, w]                         -> [h, w, C]
  reshape  same element order

Keys of the video-only parts (memory attention/encoder, object pointers) are listed in
`IGNORED_PREFIXES` and skipped; any other unknown key, missing param or shape mismatch is an
error naming the key.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from segzero_jax.models.sam2.config import PRESETS, Sam2Config, get_preset
from segzero_jax.models.sam2.hiera_layout import block_name, block_segments, is_scanned, segment_name
from segzero_jax.models.sam2.model import abstract_params
from segzero_jax.models.tensor_files import read_safetensors, read_torch_state_dict

_T = r"image_encoder\.trunk\."
_B = _T + r"blocks\.(?P<block>\d+)\."
_D = r"sam_mask_decoder\."
_P = r"sam_prompt_encoder\."
_ATTN = r"(?P<attn>self_attn|cross_attn_token_to_image|cross_attn_image_to_token)"

TABLE: tuple[tuple[str, str, str], ...] = (
    # Hiera trunk
    (_T + r"patch_embed\.proj\.weight", "trunk/patch_embed_kernel", "conv"),
    (_T + r"patch_embed\.proj\.bias", "trunk/patch_embed_bias", "reshape"),
    (_T + r"pos_embed", "trunk/pos_embed", "chw"),
    (_T + r"pos_embed_window", "trunk/pos_embed_window", "chw"),
    (_B + r"norm(?P<n>[12])\.weight", "trunk/{block}/norm{n}/scale", "reshape"),
    (_B + r"norm(?P<n>[12])\.bias", "trunk/{block}/norm{n}/bias", "reshape"),
    (_B + r"attn\.qkv\.weight", "trunk/{block}/attn/{part}_kernel", "linear@qkv"),
    (_B + r"attn\.qkv\.bias", "trunk/{block}/attn/{part}_bias", "reshape@qkv"),
    (_B + r"attn\.proj\.weight", "trunk/{block}/attn/proj_kernel", "linear"),
    (_B + r"attn\.proj\.bias", "trunk/{block}/attn/proj_bias", "reshape"),
    (_B + r"mlp\.layers\.(?P<l>\d)\.weight", "trunk/{block}/mlp/layers_{l}/kernel", "linear"),
    (_B + r"mlp\.layers\.(?P<l>\d)\.bias", "trunk/{block}/mlp/layers_{l}/bias", "reshape"),
    (_B + r"proj\.weight", "trunk/{block}/proj/kernel", "linear"),
    (_B + r"proj\.bias", "trunk/{block}/proj/bias", "reshape"),
    # FPN neck
    (r"image_encoder\.neck\.convs\.(?P<i>\d)\.conv\.weight", "neck/convs_{i}/kernel", "conv"),
    (r"image_encoder\.neck\.convs\.(?P<i>\d)\.conv\.bias", "neck/convs_{i}/bias", "reshape"),
    (r"no_mem_embed", "no_mem_embed", "reshape"),
    # prompt encoder
    (_P + r"pe_layer\.positional_encoding_gaussian_matrix", "prompt_encoder/pe_gaussian", "reshape"),
    (_P + r"point_embeddings\.(?P<stack>\d)\.weight", "prompt_encoder/point_embeddings", "reshape"),
    (_P + r"not_a_point_embed\.weight", "prompt_encoder/not_a_point_embed", "reshape"),
    (_P + r"no_mask_embed\.weight", "prompt_encoder/no_mask_embed", "reshape"),
    (_P + r"mask_downscaling\.0\.(?P<wb>weight|bias)", "prompt_encoder/mask_conv0/{wb}", "conv"),
    (_P + r"mask_downscaling\.1\.weight", "prompt_encoder/mask_norm0/scale", "reshape"),
    (_P + r"mask_downscaling\.1\.bias", "prompt_encoder/mask_norm0/bias", "reshape"),
    (_P + r"mask_downscaling\.3\.(?P<wb>weight|bias)", "prompt_encoder/mask_conv1/{wb}", "conv"),
    (_P + r"mask_downscaling\.4\.weight", "prompt_encoder/mask_norm1/scale", "reshape"),
    (_P + r"mask_downscaling\.4\.bias", "prompt_encoder/mask_norm1/bias", "reshape"),
    (_P + r"mask_downscaling\.6\.(?P<wb>weight|bias)", "prompt_encoder/mask_conv2/{wb}", "conv"),
    # mask decoder: two-way transformer
    (_D + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.(?P<p>[qkv])_proj\.weight",
     "mask_decoder/transformer/layers_{l}/{attn}/{p}_proj_kernel", "linear"),
    (_D + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.(?P<p>[qkv])_proj\.bias",
     "mask_decoder/transformer/layers_{l}/{attn}/{p}_proj_bias", "reshape"),
    (_D + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.out_proj\.weight",
     "mask_decoder/transformer/layers_{l}/{attn}/out_proj_kernel", "linear"),
    (_D + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.out_proj\.bias",
     "mask_decoder/transformer/layers_{l}/{attn}/out_proj_bias", "reshape"),
    (_D + r"transformer\.layers\.(?P<l>\d+)\.norm(?P<n>\d)\.weight",
     "mask_decoder/transformer/layers_{l}/norm{n}/scale", "reshape"),
    (_D + r"transformer\.layers\.(?P<l>\d+)\.norm(?P<n>\d)\.bias",
     "mask_decoder/transformer/layers_{l}/norm{n}/bias", "reshape"),
    (_D + r"transformer\.layers\.(?P<l>\d+)\.mlp\.layers\.(?P<m>\d)\.weight",
     "mask_decoder/transformer/layers_{l}/mlp/layers_{m}/kernel", "linear"),
    (_D + r"transformer\.layers\.(?P<l>\d+)\.mlp\.layers\.(?P<m>\d)\.bias",
     "mask_decoder/transformer/layers_{l}/mlp/layers_{m}/bias", "reshape"),
    (_D + r"transformer\.final_attn_token_to_image\.(?P<p>[qkv]|out)_proj\.weight",
     "mask_decoder/transformer/final_attn_token_to_image/{p}_proj_kernel", "linear"),
    (_D + r"transformer\.final_attn_token_to_image\.(?P<p>[qkv]|out)_proj\.bias",
     "mask_decoder/transformer/final_attn_token_to_image/{p}_proj_bias", "reshape"),
    (_D + r"transformer\.norm_final_attn\.weight", "mask_decoder/transformer/norm_final_attn/scale", "reshape"),
    (_D + r"transformer\.norm_final_attn\.bias", "mask_decoder/transformer/norm_final_attn/bias", "reshape"),
    # mask decoder: tokens, upscaling, heads
    (_D + r"(?P<t>iou_token|mask_tokens|obj_score_token)\.weight", "mask_decoder/{t}", "reshape"),
    (_D + r"output_upscaling\.0\.(?P<wb>weight|bias)", "mask_decoder/upscale_conv1/{wb}", "conv_t"),
    (_D + r"output_upscaling\.1\.weight", "mask_decoder/upscale_norm/scale", "reshape"),
    (_D + r"output_upscaling\.1\.bias", "mask_decoder/upscale_norm/bias", "reshape"),
    (_D + r"output_upscaling\.3\.(?P<wb>weight|bias)", "mask_decoder/upscale_conv2/{wb}", "conv_t"),
    (_D + r"conv_s(?P<s>[01])\.(?P<wb>weight|bias)", "conv_s{s}/{wb}", "conv"),
    (_D + r"output_hypernetworks_mlps\.(?P<stack>\d+)\.layers\.(?P<l>\d)\.weight",
     "mask_decoder/output_hypernetworks/layers_{l}_kernel", "linear"),
    (_D + r"output_hypernetworks_mlps\.(?P<stack>\d+)\.layers\.(?P<l>\d)\.bias",
     "mask_decoder/output_hypernetworks/layers_{l}_bias", "reshape"),
    (_D + r"iou_prediction_head\.layers\.(?P<l>\d)\.weight", "mask_decoder/iou_prediction_head/layers_{l}/kernel", "linear"),
    (_D + r"iou_prediction_head\.layers\.(?P<l>\d)\.bias", "mask_decoder/iou_prediction_head/layers_{l}/bias", "reshape"),
    (_D + r"pred_obj_score_head\.layers\.(?P<l>\d)\.weight", "mask_decoder/pred_obj_score_head/layers_{l}/kernel", "linear"),
    (_D + r"pred_obj_score_head\.layers\.(?P<l>\d)\.bias", "mask_decoder/pred_obj_score_head/layers_{l}/bias", "reshape"),
    (_D + r"pred_obj_score_head\.weight", "mask_decoder/pred_obj_score_head/kernel", "linear"),
    (_D + r"pred_obj_score_head\.bias", "mask_decoder/pred_obj_score_head/bias", "reshape"),
)

IGNORED_PREFIXES = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc",
                    "no_obj_ptr", "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.",
                    "no_obj_embed_spatial")


def _weight_or_bias(perm: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    return lambda a: a if a.ndim == 1 else a.transpose(perm)


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "reshape": lambda a: a,
    "linear": lambda a: a.T,
    "conv": _weight_or_bias((2, 3, 1, 0)),
    "conv_t": _weight_or_bias((0, 2, 3, 1)),
    "chw": lambda a: a.reshape(a.shape[-3:]).transpose(1, 2, 0),
}

_HB = r"vision_encoder\.backbone\."
_HBB = _HB + r"blocks\.(?P<block>\d+)\."
_HD = r"mask_decoder\."
_HP = r"prompt_encoder\."
_HMLP = {"proj_in": "0", "layers.0": "1", "proj_out": "2"}  # transformers' 3-layer MLP names

HF_TABLE: tuple[tuple[str, str, str], ...] = (
    (_HB + r"patch_embed\.projection\.weight", "trunk/patch_embed_kernel", "conv"),
    (_HB + r"patch_embed\.projection\.bias", "trunk/patch_embed_bias", "reshape"),
    (_HB + r"pos_embed", "trunk/pos_embed", "chw"),
    (_HB + r"pos_embed_window", "trunk/pos_embed_window", "chw"),
    (_HBB + r"layer_norm(?P<n>[12])\.weight", "trunk/{block}/norm{n}/scale", "reshape"),
    (_HBB + r"layer_norm(?P<n>[12])\.bias", "trunk/{block}/norm{n}/bias", "reshape"),
    (_HBB + r"attn\.qkv\.weight", "trunk/{block}/attn/{part}_kernel", "linear@qkv"),
    (_HBB + r"attn\.qkv\.bias", "trunk/{block}/attn/{part}_bias", "reshape@qkv"),
    (_HBB + r"attn\.proj\.weight", "trunk/{block}/attn/proj_kernel", "linear"),
    (_HBB + r"attn\.proj\.bias", "trunk/{block}/attn/proj_bias", "reshape"),
    (_HBB + r"mlp\.proj_in\.weight", "trunk/{block}/mlp/layers_0/kernel", "linear"),
    (_HBB + r"mlp\.proj_in\.bias", "trunk/{block}/mlp/layers_0/bias", "reshape"),
    (_HBB + r"mlp\.proj_out\.weight", "trunk/{block}/mlp/layers_1/kernel", "linear"),
    (_HBB + r"mlp\.proj_out\.bias", "trunk/{block}/mlp/layers_1/bias", "reshape"),
    (_HBB + r"proj\.weight", "trunk/{block}/proj/kernel", "linear"),
    (_HBB + r"proj\.bias", "trunk/{block}/proj/bias", "reshape"),
    (r"vision_encoder\.neck\.convs\.(?P<i>\d)\.(?P<wb>weight|bias)", "neck/convs_{i}/{wb}", "conv"),
    (r"no_memory_embedding", "no_mem_embed", "reshape"),
    (r"shared_image_embedding\.positional_embedding", "prompt_encoder/pe_gaussian", "reshape"),
    (_HP + r"point_embed\.weight", "prompt_encoder/point_embeddings", "reshape"),
    (_HP + r"not_a_point_embed\.weight", "prompt_encoder/not_a_point_embed", "reshape"),
    (_HP + r"no_mask_embed\.weight", "prompt_encoder/no_mask_embed", "reshape"),
    (_HP + r"mask_embed\.conv(?P<c>[12])\.(?P<wb>weight|bias)", "prompt_encoder/mask_conv{c0}/{wb}", "conv"),
    (_HP + r"mask_embed\.conv3\.(?P<wb>weight|bias)", "prompt_encoder/mask_conv2/{wb}", "conv"),
    (_HP + r"mask_embed\.layer_norm(?P<c>[12])\.weight", "prompt_encoder/mask_norm{c0}/scale", "reshape"),
    (_HP + r"mask_embed\.layer_norm(?P<c>[12])\.bias", "prompt_encoder/mask_norm{c0}/bias", "reshape"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.(?P<p>[qkv])_proj\.weight",
     "mask_decoder/transformer/layers_{l}/{attn}/{p}_proj_kernel", "linear"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.(?P<p>[qkv])_proj\.bias",
     "mask_decoder/transformer/layers_{l}/{attn}/{p}_proj_bias", "reshape"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.o_proj\.weight",
     "mask_decoder/transformer/layers_{l}/{attn}/out_proj_kernel", "linear"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\." + _ATTN + r"\.o_proj\.bias",
     "mask_decoder/transformer/layers_{l}/{attn}/out_proj_bias", "reshape"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\.layer_norm(?P<n>\d)\.weight",
     "mask_decoder/transformer/layers_{l}/norm{n}/scale", "reshape"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\.layer_norm(?P<n>\d)\.bias",
     "mask_decoder/transformer/layers_{l}/norm{n}/bias", "reshape"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\.mlp\.proj_(?P<io>in|out)\.weight",
     "mask_decoder/transformer/layers_{l}/mlp/layers_{io}/kernel", "linear"),
    (_HD + r"transformer\.layers\.(?P<l>\d+)\.mlp\.proj_(?P<io>in|out)\.bias",
     "mask_decoder/transformer/layers_{l}/mlp/layers_{io}/bias", "reshape"),
    (_HD + r"transformer\.final_attn_token_to_image\.(?P<p>[qkvo])_proj\.weight",
     "mask_decoder/transformer/final_attn_token_to_image/{p}_proj_kernel", "linear"),
    (_HD + r"transformer\.final_attn_token_to_image\.(?P<p>[qkvo])_proj\.bias",
     "mask_decoder/transformer/final_attn_token_to_image/{p}_proj_bias", "reshape"),
    (_HD + r"transformer\.layer_norm_final_attn\.weight", "mask_decoder/transformer/norm_final_attn/scale", "reshape"),
    (_HD + r"transformer\.layer_norm_final_attn\.bias", "mask_decoder/transformer/norm_final_attn/bias", "reshape"),
    (_HD + r"(?P<t>iou_token|mask_tokens|obj_score_token)\.weight", "mask_decoder/{t}", "reshape"),
    (_HD + r"upscale_conv(?P<c>[12])\.(?P<wb>weight|bias)", "mask_decoder/upscale_conv{c}/{wb}", "conv_t"),
    (_HD + r"upscale_layer_norm\.weight", "mask_decoder/upscale_norm/scale", "reshape"),
    (_HD + r"upscale_layer_norm\.bias", "mask_decoder/upscale_norm/bias", "reshape"),
    (_HD + r"conv_s(?P<s>[01])\.(?P<wb>weight|bias)", "conv_s{s}/{wb}", "conv"),
    (_HD + r"output_hypernetworks_mlps\.(?P<stack>\d+)\.(?P<mlp>proj_in|layers\.0|proj_out)\.weight",
     "mask_decoder/output_hypernetworks/layers_{mlp}_kernel", "linear"),
    (_HD + r"output_hypernetworks_mlps\.(?P<stack>\d+)\.(?P<mlp>proj_in|layers\.0|proj_out)\.bias",
     "mask_decoder/output_hypernetworks/layers_{mlp}_bias", "reshape"),
    (_HD + r"(?P<head>iou_prediction_head|pred_obj_score_head)\.(?P<mlp>proj_in|layers\.0|proj_out)\.weight",
     "mask_decoder/{head}/layers_{mlp}/kernel", "linear"),
    (_HD + r"(?P<head>iou_prediction_head|pred_obj_score_head)\.(?P<mlp>proj_in|layers\.0|proj_out)\.bias",
     "mask_decoder/{head}/layers_{mlp}/bias", "reshape"),
)

# transformers keeps a second copy of the point-encoding Gaussian inside its prompt encoder;
# the loader checks it equals `shared_image_embedding` (as in converted checkpoints) and skips it.
HF_TIED = {"prompt_encoder.shared_embedding.positional_embedding": "shared_image_embedding.positional_embedding"}

_COMPILED = {"meta": tuple((re.compile(p + r"$"), t, f) for p, t, f in TABLE),
             "transformers": tuple((re.compile(p + r"$"), t, f) for p, t, f in HF_TABLE)}
_IGNORED = {"meta": IGNORED_PREFIXES, "transformers": tuple(HF_TIED)}


def block_locations(config: Sam2Config) -> dict[int, tuple[str, Optional[int]]]:
    """Hiera block index -> (param scope `segment_j`, stack index or None if unstacked), or
    (`block_i`, None) when `config.scan_blocks` is off."""
    loc = {}
    for j, (start, count, spec) in enumerate(block_segments(config)):
        for k in range(count):
            if not config.scan_blocks:
                loc[start + k] = (block_name(start + k), None)
            else:
                loc[start + k] = (segment_name(j), k if is_scanned(spec) else None)
    return loc


_PARTS = {"qkv": ("q", "k", "v")}   # a table transform `T@qkv` fills {part} = q, k, v


class Piece(NamedTuple):
    """What one param takes of a checkpoint tensor: the `index`-th of `parts` equal slices of
    its first axis (all of it when `parts` is 1), moved by the `TRANSFORMS` entry `transform`."""

    transform: str
    index: int = 0
    parts: int = 1

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if self.parts > 1:
            a = np.split(a, self.parts, axis=0)[self.index]
        return TRANSFORMS[self.transform](a)


def _resolve(key: str, config: Sam2Config, blocks: dict,
             source: str = "meta") -> Optional[list[tuple[tuple[str, ...], Optional[int], Piece]]]:
    """[(param path, stack index or None, piece)] filled by a checkpoint key (one entry, or one
    per part of a split), None for a key no table row matches."""
    for pattern, template, transform in _COMPILED[source]:
        m = pattern.match(key)
        if not m:
            continue
        groups = dict(m.groupdict())
        stack = int(groups.pop("stack")) if "stack" in groups else None
        if "block" in groups:
            b = int(groups["block"])
            if b not in blocks:
                raise ValueError(f"checkpoint key {key!r}: block {b} does not exist in a "
                                 f"{config.depth}-block trunk")
            groups["block"], stack = blocks[b]
        if "wb" in groups:
            groups["wb"] = {"weight": "kernel", "bias": "bias"}[groups["wb"]]
        if "c" in groups:
            groups["c0"] = str(int(groups["c"]) - 1)
        if "io" in groups:
            groups["io"] = {"in": "0", "out": "1"}[groups["io"]]
        if "mlp" in groups:
            groups["mlp"] = _HMLP[groups["mlp"]]
        if groups.get("p") == "o":
            groups["p"] = "out"
        name, _, split = transform.partition("@")
        if not split:
            return [(tuple(template.format(**groups).split("/")), stack, Piece(name))]
        parts = _PARTS[split]
        return [(tuple(template.format(**groups, part=part).split("/")), stack, Piece(name, i, len(parts)))
                for i, part in enumerate(parts)]
    return None


def plan_conversion(shapes: Mapping[str, tuple[int, ...]], config: Sam2Config,
                    source: str = "meta") -> list[tuple]:
    """Checks a reference state dict's key -> shape map against `config` without touching data.

    `source` picks the table: "meta" (`TABLE`) or "transformers" (`HF_TABLE`).
    Returns [(key, param path, stack index or None, `Piece`, target shape)]; raises ValueError
    naming the key for an unknown key, a shape that does not fit, or params left unfilled.
    """
    targets = flatten_dict(nn.meta.unbox(abstract_params(config)))
    seen: dict[tuple[str, ...], set] = {path: set() for path in targets}
    blocks = block_locations(config)
    plan = []
    for key, shape in shapes.items():
        hits = _resolve(key, config, blocks, source)
        if hits is None:
            if key.startswith(_IGNORED[source]):
                continue
            raise ValueError(f"checkpoint key {key!r} has no place in the SAM2 params "
                             "(wrong config or not a SAM2 checkpoint?)")
        for path, stack, piece in hits:
            if path not in targets:
                raise ValueError(f"checkpoint key {key!r} maps to {'/'.join(path)}, which this config "
                                 "does not have")
            full = targets[path].shape
            target = full if stack is None else full[1:]
            if stack is not None and stack >= full[0]:
                raise ValueError(f"checkpoint key {key!r}: index {stack} out of range for "
                                 f"{'/'.join(path)} {full}")
            try:
                moved = piece(np.broadcast_to(np.float32(0), tuple(shape))).shape
            except ValueError:   # a split of an axis that does not divide
                moved = None
            if moved is None or int(np.prod(moved)) != int(np.prod(target)) or (
                    len(moved) == len(target) and tuple(moved) != tuple(target)):
                raise ValueError(f"checkpoint key {key!r}: shape {tuple(shape)} does not fit "
                                 f"{'/'.join(path)} {tuple(target)}")
            if stack in seen[path]:
                raise ValueError(f"checkpoint key {key!r} fills {'/'.join(path)} a second time")
            seen[path].add(stack)
            plan.append((key, path, stack, piece, tuple(target)))
    missing = ["/".join(path) for path, t in targets.items()
               if not seen[path] or (None not in seen[path] and seen[path] != set(range(t.shape[0])))]
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} SAM2 params, e.g. {missing[:5]}")
    return plan


def convert_state_dict(state_dict: Mapping[str, Any], config: Sam2Config, source: str = "meta") -> dict:
    """Reference state dict (numpy arrays) -> params (nested dict of float32 numpy arrays)."""
    plan = plan_conversion({k: np.shape(v) for k, v in state_dict.items()}, config, source)
    targets = flatten_dict(nn.meta.unbox(abstract_params(config)))
    out: dict[tuple[str, ...], np.ndarray] = {}
    for key, path, stack, piece, target in plan:
        arr = piece(np.asarray(state_dict[key], dtype=np.float32)).reshape(target)
        if stack is None:
            out[path] = arr
        else:
            out.setdefault(path, np.zeros(targets[path].shape, np.float32))[stack] = arr
    return unflatten_dict(out)


def _is_safetensors(path: str) -> bool:
    return path.endswith(".safetensors") or os.path.isdir(path)


def _safetensors_state_dict(path: str) -> dict[str, np.ndarray]:
    files = ([os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".safetensors")]
             if os.path.isdir(path) else [path])
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {path!r}")
    state: dict[str, np.ndarray] = {}
    for f in files:
        state.update({k: np.asarray(v, np.float32) for k, v in read_safetensors(f).items()})
    for copy, original in HF_TIED.items():
        if copy in state and original in state and not np.array_equal(state[copy], state[original]):
            raise ValueError(f"{path}: {copy!r} differs from {original!r}; SAM2 uses one point "
                             "encoding for both, so these weights cannot be represented")
    return state


def infer_preset(state_dict: Mapping[str, Any], source: str = "meta") -> str:
    """Names the preset whose trunk width and depth match a reference state dict."""
    trunk = {"meta": (_T, "patch_embed.proj.bias"), "transformers": (_HB, "patch_embed.projection.bias")}[source]
    key = trunk[0].replace("\\", "") + trunk[1]
    if key not in state_dict:
        raise ValueError(f"not a SAM2 state dict: {key!r} is missing")
    width = int(np.shape(state_dict[key])[0])
    depth = 1 + max(int(m.group(1)) for k in state_dict
                    if (m := re.match(trunk[0] + r"blocks\.(\d+)\.", k)))
    for name, cfg in PRESETS.items():
        if cfg.embed_dim == width and cfg.depth == depth:
            return name
    raise ValueError(f"no SAM2 preset has a {depth}-block trunk of width {width}; pass a config")


def load_checkpoint(path: str, config: Union[Sam2Config, str, None] = None, *, shardings: Any = None,
                    mesh: Optional[jax.sharding.Mesh] = None, rules: Any = None,
                    **overrides: Any) -> tuple[Sam2Config, dict]:
    """Reads a SAM2 checkpoint -> (config, params).

    `path`: Meta's `sam2_hiera_*.pt` (read by torch with weights_only=True), or transformers'
    `Sam2Model` weights (a `.safetensors` file or a directory holding `model.safetensors`).
    `config` is a `Sam2Config`, a preset name, or None to pick the preset matching the file;
    `overrides` replace its fields (e.g. `scan_blocks=False`, `dtype=jnp.bfloat16`).
    Params are cast to `config.param_dtype`; with `shardings` (a tree matching the params, as
    the policy's loader takes) they are placed so, and with `mesh` by the logical-axis `rules`.
    """
    if shardings is not None and mesh is not None:
        raise ValueError("load_checkpoint: pass shardings= or mesh=, not both")
    source = "transformers" if _is_safetensors(path) else "meta"
    state = _safetensors_state_dict(path) if source == "transformers" else read_torch_state_dict(path)
    if config is None:
        config = infer_preset(state, source)
    if isinstance(config, str):
        config = get_preset(config)
    config = config.replace(**overrides) if overrides else config
    params = convert_state_dict(state, config, source)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype=config.param_dtype), params)
    if mesh is not None:
        shardings = param_shardings(config, mesh, rules)
    if shardings is not None:
        params = jax.device_put(params, shardings)
    return config, params


def param_shardings(config: Sam2Config, mesh: jax.sharding.Mesh, rules: Any = None) -> dict:
    """NamedShardings for the params from their logical axes (indivisible dims replicated)."""
    from segzero_jax.parallel import DEFAULT_RULES, logical_shardings

    return logical_shardings(abstract_params(config), mesh, rules or DEFAULT_RULES)
