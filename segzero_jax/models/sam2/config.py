"""SAM2 configuration and presets (Hiera tiny/small/base+/large and a tiny test config).

`Sam2Config` is a frozen dataclass, so it can be a static argument of `jax.jit`. Derived
quantities (per-block dims, heads, window sizes, q-pool flags, the FPN channel list) are
computed here once, the way the reference `Hiera.__init__` computes them, and shared by the
model and the checkpoint converter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One Hiera block: dims in/out, heads, window size (0 = global) and q-pooling."""

    dim: int
    dim_out: int
    num_heads: int
    window_size: int
    q_pool: bool


@dataclasses.dataclass(frozen=True)
class Sam2Config:
    """Architecture of SAM2's image path (image encoder + prompt encoder + mask decoder)."""

    # Hiera trunk
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0
    # FPN neck
    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: str = "nearest"
    scalp: int = 1
    # SAM heads
    image_size: int = 1024
    backbone_stride: int = 16
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    use_high_res_features: bool = True
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    directly_add_no_mem_embed: bool = True
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    mask_threshold: float = 0.0
    # numerics / execution
    param_dtype: Dtype = jnp.float32
    dtype: Dtype = jnp.float32
    attention_implementation: str = "auto"
    # "auto" on a GPU packs attention over short windows (Hiera-L's 16-token stage-2 windows) into
    # cuDNN rows of up to this many positions with a block-diagonal bias; 0 keeps them on XLA.
    attention_pack_tokens: int = 128
    remat_policy: str = "none"
    # Runs of same-shape Hiera blocks under one nn.scan (params stacked, `trunk/segment_j`), or
    # every block a module of its own (`trunk/block_i`, Meta's block index): no loop, and no
    # per-block copies of the weights out of the stacks, for a frozen model's inference on a GPU.
    scan_blocks: bool = True
    # The trunk MLP's GELU: "exact" (erf, the reference's `nn.GELU()`), "tanh" (its tanh form),
    # or one of `layers.AUTO_CHOICES` ("auto" resolved by the backend tracing the model,
    # "gpu_auto"/"tpu_auto" as that backend would): tanh on a GPU in 16-bit compute, else exact. On a GPU, XLA hands bias + tanh-GELU to cuBLAS as the first MLP matmul's
    # epilogue, applied to the float32 accumulator and rounded once; the exact form is a pass of
    # its own over an activation four times the block's width. TPUs fuse either form into the
    # matmul, and float32 keeps the reference's function, so both take the exact form. The
    # forms differ by at most 4.8e-4 (near x = 2.7, where bfloat16's rounding step is 0.0156).
    trunk_gelu: str = "auto"

    def __post_init__(self):
        from segzero_jax.models.layers import ATTENTION_IMPLEMENTATIONS, AUTO_CHOICES, REMAT_POLICIES
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"Sam2Config.attention_implementation={self.attention_implementation!r} is not "
                             f"one of {ATTENTION_IMPLEMENTATIONS}")
        if self.attention_pack_tokens < 0:
            raise ValueError(f"Sam2Config.attention_pack_tokens={self.attention_pack_tokens} must be >= 0")
        if self.trunk_gelu not in ("exact", "tanh", *AUTO_CHOICES):
            raise ValueError(f"Sam2Config.trunk_gelu={self.trunk_gelu!r} is not one of "
                             f"{('exact', 'tanh', *AUTO_CHOICES)}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"Sam2Config.remat_policy={self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
        if not isinstance(self.scan_blocks, bool):
            raise ValueError(f"Sam2Config.scan_blocks={self.scan_blocks!r} is not a bool")
        if len(self.stages) != len(self.window_spec):
            raise ValueError(f"Sam2Config.window_spec {self.window_spec} needs one size per stage "
                             f"{self.stages}")
        if not 0 <= self.q_pool <= len(self.stages) - 1:
            raise ValueError(f"Sam2Config.q_pool={self.q_pool} must be in [0, {len(self.stages) - 1}]")
        if self.image_size % self.backbone_stride:
            raise ValueError(f"Sam2Config.image_size={self.image_size} is not a multiple of "
                             f"backbone_stride={self.backbone_stride}")
        if self.fpn_interp_model not in ("nearest", "bilinear"):
            raise ValueError(f"Sam2Config.fpn_interp_model={self.fpn_interp_model!r} is not "
                             "'nearest' or 'bilinear'")
        if any(not 0 <= b < sum(self.stages) for b in self.global_att_blocks):
            raise ValueError(f"Sam2Config.global_att_blocks {self.global_att_blocks} must index the "
                             f"{sum(self.stages)} trunk blocks")
        if (self.image_size // 4) % self.window_spec[0]:
            raise ValueError(f"Sam2Config: the {self.image_size // 4}-wide patch grid is not a multiple "
                             f"of window_spec[0]={self.window_spec[0]} (the tiled window pos-embed)")
        if len(self.stages) - self.scalp < 3 and self.use_high_res_features:
            raise ValueError("Sam2Config: use_high_res_features needs 3 FPN levels after the scalp")

    def trunk_activation(self) -> str:
        """The trunk MLP's activation by name (`segzero_jax.models.layers.ACTIVATIONS`); an auto
        choice resolves by backend (call it where the model is traced)."""
        from segzero_jax.models.layers import AUTO_CHOICES, auto_backend
        gelu = self.trunk_gelu
        if gelu in AUTO_CHOICES:
            on_gpu = auto_backend(gelu) == "gpu"
            gelu = "tanh" if on_gpu and jnp.dtype(self.dtype).itemsize == 2 else "exact"
        return "gelu_pytorch_tanh" if gelu == "tanh" else "gelu"

    # --- derived, mirroring Hiera.__init__ -------------------------------------------------
    @property
    def depth(self) -> int:
        return sum(self.stages)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        return tuple(sum(self.stages[:i]) - 1 for i in range(1, len(self.stages) + 1))

    @property
    def q_pool_blocks(self) -> tuple[int, ...]:
        return tuple(x + 1 for x in self.stage_ends[:-1])[: self.q_pool]

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        """Per-block specs. The window size lags a block: a stage's first block keeps the
        previous stage's window (it is the block that q-pools from that resolution)."""
        specs, dim, heads, cur_stage = [], self.embed_dim, self.num_heads, 1
        for i in range(self.depth):
            dim_out = dim
            window = self.window_spec[cur_stage - 1]
            if i in self.global_att_blocks:
                window = 0
            if i - 1 in self.stage_ends:
                dim_out = int(dim * self.dim_mul)
                heads = int(heads * self.head_mul)
                cur_stage += 1
            specs.append(BlockSpec(dim, dim_out, heads, window, i in self.q_pool_blocks))
            dim = dim_out
        return tuple(specs)

    @property
    def backbone_channel_list(self) -> tuple[int, ...]:
        """Trunk output dims, deepest stage first (the neck's conv order)."""
        return tuple(self.blocks[i].dim_out for i in self.stage_ends[::-1])

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.backbone_stride

    @property
    def low_res_size(self) -> int:
        return 4 * self.image_embedding_size

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def replace(self, **kwargs: Any) -> "Sam2Config":
        return dataclasses.replace(self, **kwargs)


# Meta's image-path configs (`sam2_hiera_{t,s,b+,l}.yaml`), and a few-second config for unit
# tests: test_tiny has a 128x128 input, window padding in stages 3 and 4, a global block, a run
# of two uniform blocks and every stage transition pooled; its SAM heads keep the reference's
# fixed sizes (mlp 2048, 8 heads, IoU hidden 256).
PRESETS: dict[str, Sam2Config] = {
    "hiera_tiny": Sam2Config(),
    "hiera_small": Sam2Config(stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "hiera_base_plus": Sam2Config(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                                  window_pos_embed_bkg_spatial_size=(14, 14)),
    "hiera_large": Sam2Config(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                              window_spec=(8, 4, 16, 8)),   # Seg-Zero's segmenter
    "test_tiny": Sam2Config(embed_dim=16, num_heads=1, stages=(1, 2, 4, 2), global_att_blocks=(6,),
                            window_spec=(4, 2, 6, 3), window_pos_embed_bkg_spatial_size=(3, 3), d_model=32,
                            image_size=128),
}


META_CONFIG_FILES = {"hiera_tiny": "configs/sam2/sam2_hiera_t.yaml",
                     "hiera_small": "configs/sam2/sam2_hiera_s.yaml",
                     "hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml",
                     "hiera_large": "configs/sam2/sam2_hiera_l.yaml"}


def meta_hydra_overrides(cfg: Sam2Config) -> list[str]:
    """Hydra overrides that turn Meta's `sam2_hiera_t.yaml` into `cfg`'s image-path architecture
    (used to build reference models for configs without a yaml of their own)."""
    t = "++model.image_encoder.trunk."
    lst = lambda v: "[" + ",".join(str(int(x)) for x in v) + "]"
    return [
        f"++model.image_size={cfg.image_size}",
        f"{t}embed_dim={cfg.embed_dim}", f"{t}num_heads={cfg.num_heads}",
        f"{t}stages={lst(cfg.stages)}", f"{t}global_att_blocks={lst(cfg.global_att_blocks)}",
        f"{t}window_spec={lst(cfg.window_spec)}",
        f"{t}window_pos_embed_bkg_spatial_size={lst(cfg.window_pos_embed_bkg_spatial_size)}",
        f"++model.image_encoder.neck.d_model={cfg.d_model}",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={cfg.d_model}",
        f"++model.image_encoder.neck.backbone_channel_list={lst(cfg.backbone_channel_list)}",
    ]


def transformers_config_kwargs(cfg: Sam2Config) -> dict:
    """Keyword arguments of transformers' `Sam2Config` for `cfg`'s image-path architecture
    (used to build `Sam2Model` peers and references; no transformers import here)."""
    stages = range(len(cfg.stages))
    dims = [cfg.embed_dim * 2 ** i for i in stages]
    n = cfg.image_embedding_size
    backbone = dict(model_type="sam2_hiera_det_model", hidden_size=cfg.embed_dim,
                    num_attention_heads=cfg.num_heads, blocks_per_stage=list(cfg.stages),
                    embed_dim_per_stage=dims,
                    num_attention_heads_per_stage=[cfg.num_heads * 2 ** i for i in stages],
                    window_size_per_stage=list(cfg.window_spec),
                    global_attention_blocks=list(cfg.global_att_blocks),
                    window_positional_embedding_background_size=list(cfg.window_pos_embed_bkg_spatial_size),
                    image_size=cfg.image_size)
    return dict(
        vision_config=dict(backbone_config=backbone, backbone_channel_list=dims[::-1],
                           fpn_hidden_size=cfg.d_model,
                           backbone_feature_sizes=[[4 * n, 4 * n], [2 * n, 2 * n], [n, n]]),
        prompt_encoder_config=dict(hidden_size=cfg.d_model, image_size=cfg.image_size),
        mask_decoder_config=dict(hidden_size=cfg.d_model))


def get_preset(name: str, **overrides: Any) -> Sam2Config:
    """The preset `name` of `PRESETS` with field overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown SAM2 preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
