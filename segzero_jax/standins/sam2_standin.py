"""The SAM2 stand-in: a small SAM2 whose prompt encoder, neck and mask decoder are trained briefly
on a split's masks with Seg-Zero's prompts (the box and two points, labels 1, 1).

    metrics = train_sam2_standin(train, val, out_dir, Sam2StandinSettings(steps=600))

Recipe (what makes a from-scratch decoder use the prompt within a few hundred steps on a CPU):

* the Hiera trunk keeps its random initialisation and is run once per image; its features are
  cached, so a step costs the neck and the decoder only (`prompts_per_image` prompts per image);
* the q and k projections of each cross-attention start equal (W_q = W_k), so an image cell
  first attends to the prompt tokens whose position encoding matches its own: a positional
  match the training sharpens (with independent draws the attention starts blind to position
  and the decoder settles on segmenting every object);
* each prompt is the ground-truth box and points plus Gaussian noise of standard deviation
  u * max_jitter times the box's width / height (u uniform in [0, 1] per prompt);
* loss, on the low-resolution logits (S/4) against the area-resampled mask m, for all four
  decoder masks k: BCE(z_k, m) + dice(sigmoid(z_k), m), plus (s_k - IoU(z_k > 0, m > 1/2))^2
  for the IoU head s; AdamW with warmup + cosine decay and global-norm clipping;
* the decoder first segments every object (IoU about 0.2), then, after 150 (seed 1) to 400
  (seed 0) steps, starts to follow the prompt; should the training IoU still be below
  `min_train_iou` at the end, a second cosine cycle follows (a warm restart).

`evaluate_sam2` scores through the inference path (`predict_batch`, the best-scoring of the
multimask outputs, as Seg-Zero's evaluation picks it) at full resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from segzero_jax import checkpoint
from segzero_jax.models import sam2
from segzero_jax.models.sam2.model import Sam2
from segzero_jax.models.sam2.predictor import concat_prompts, predict_batch, preprocess_image, to_input_frame
from segzero_jax.models.sam2.resize import resize_hw
from segzero_jax.standins.examples import SegExamples

# test_tiny's trunk; a decoder wide enough for 16-dim attention heads (test_tiny's 32-wide
# decoder with 8 heads gives the cross-attentions heads of dimension 2).
DEFAULT_OVERRIDES = (("d_model", 64), ("decoder_num_heads", 2), ("decoder_mlp_dim", 256),
                     ("iou_head_hidden_dim", 64))


@dataclasses.dataclass(frozen=True)
class Sam2StandinSettings:
    preset: str = "test_tiny"
    overrides: tuple = DEFAULT_OVERRIDES      # (field, value) pairs applied to the preset
    steps: int = 600
    batch_size: int = 8                       # images per step
    prompts_per_image: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    max_jitter: float = 0.15
    attention_gain: float = 3.0               # cross-attention q (= k) projections drawn this much larger
    eval_jitter: float = 0.1                  # the "slightly perturbed" prompts of the evaluation
    eval_batch_size: int = 50
    seed: int = 0
    # Insurance against a late start: while the mean low-res IoU over the last 50 steps' batches
    # is below min_train_iou, run another cycle of `steps` (at most max_cycles cycles).
    min_train_iou: float = 0.5
    max_cycles: int = 2

    def __post_init__(self):
        for field in ("steps", "batch_size", "prompts_per_image", "eval_batch_size", "max_cycles"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"Sam2StandinSettings.{field} must be positive, got {getattr(self, field)}")
        if self.max_jitter < 0 or self.eval_jitter < 0:
            raise ValueError("Sam2StandinSettings.max_jitter and eval_jitter must be >= 0")


def sam2_config(settings: Sam2StandinSettings) -> sam2.Sam2Config:
    return sam2.get_preset(settings.preset, **dict(settings.overrides))


_TOKENS = {"iou_token", "mask_tokens", "obj_score_token", "point_embeddings", "not_a_point_embed",
           "no_mask_embed", "pe_gaussian"}


def _fan_in(names: list[str], shape: tuple[int, ...]) -> int:
    if len(shape) == 4:                                   # convolutions [kh, kw, in, out] or [in, kh, kw, out]
        return int(np.prod(shape[:-1]))
    if names[-1].endswith("out_proj_kernel"):             # [heads, head_dim, out]
        return int(shape[0] * shape[1])
    if len(names) > 1 and names[-2] == "output_hypernetworks":   # [masks, in, out]
        return int(shape[1])
    return int(shape[0])


def init_standin_params(config: sam2.Sam2Config, seed: int, attention_gain: float = 3.0) -> dict:
    """Params drawn on the host (seconds, where tracing the model's own initialisers takes most
    of a minute on a CPU): N(0, 1) for the embeddings and the position-encoding matrix (the
    reference's nn.Embedding / randn), N(0, 0.02^2) in the trunk (the reference's trunc-normal
    0.02) and for no_mem_embed, N(0, 1 / (3 fan_in)) elsewhere (the variance of PyTorch's
    default Linear / Conv init), zero biases, unit norm scales; then each cross-attention's q
    projection is scaled by `attention_gain` and its k projection set equal to it (see the
    module docstring)."""
    abstract = nn.meta.unbox(sam2.abstract_params(config))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [str(getattr(p, "key", p)) for p in path]
        name = names[-1]
        if name == "scale":
            return np.ones(leaf.shape, np.float32)
        if name.endswith("bias"):
            return np.zeros(leaf.shape, np.float32)
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if name in _TOKENS:
            return z
        if names[0] == "trunk" or name == "no_mem_embed":
            return 0.02 * z
        return z / np.sqrt(3.0 * _fan_in(names, leaf.shape))

    params = jax.tree_util.tree_map_with_path(draw, abstract)
    transformer = params["mask_decoder"]["transformer"]
    for name, module in transformer.items():
        for sub_name, attention in [(name, module)] + list(module.items()):
            if isinstance(attention, dict) and "q_proj_kernel" in attention and (
                    "cross" in sub_name or "final" in sub_name):
                attention["q_proj_kernel"] = attention["q_proj_kernel"] * attention_gain
                attention["k_proj_kernel"] = attention["q_proj_kernel"].copy()
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=config.param_dtype), params)


def _trunk(module: Sam2, images):
    return module.trunk(images)


def _after_trunk(module: Sam2, feats):
    """`Sam2.encode_image` from the trunk's outputs: image_embed and the two high-res maps."""
    fpn, _ = module.neck(feats)
    embed = fpn[-1].astype(jnp.float32)
    if module.config.directly_add_no_mem_embed:
        embed = embed + module.no_mem_embed.astype(jnp.float32)
    return embed, (module.conv_s0(fpn[0]), module.conv_s1(fpn[1]))


def standin_loss(config: sam2.Sam2Config, params, feats, boxes, points, masks, image_hw) -> tuple[jax.Array, dict]:
    """feats: the trunk's outputs for b images; boxes float[b*K, 4], points float[b*K, 2, 2] (pixels
    of the H x W images, prompts image-major), masks float[b*K, H, W] -> (loss, metrics)."""
    model = Sam2(config)
    embed, high = model.apply({"params": params}, feats, method=_after_trunk)
    k = boxes.shape[0] // embed.shape[0]
    embed, high = jnp.repeat(embed, k, 0), tuple(jnp.repeat(h, k, 0) for h in high)
    coords, labels = concat_prompts(boxes, points, jnp.ones(points.shape[:2], jnp.int32))
    coords = to_input_frame(coords, image_hw, config.image_size)
    logits, iou_pred, _ = model.apply({"params": params}, embed, high, coords, labels, method=Sam2.decode)
    n = logits.shape[-1]
    target = resize_hw(masks.astype(jnp.float32), (n, n), "bilinear_aa")[:, None]
    bce = optax.sigmoid_binary_cross_entropy(logits, target).mean(axis=(-2, -1))
    prob = jax.nn.sigmoid(logits)
    dice = 1.0 - (2.0 * (prob * target).sum((-2, -1)) + 1.0) / (prob.sum((-2, -1)) + target.sum((-2, -1)) + 1.0)
    pred, truth = logits > 0, target > 0.5
    iou = (pred & truth).sum((-2, -1)) / jnp.maximum((pred | truth).sum((-2, -1)), 1)
    iou_loss = jnp.mean((iou_pred - jax.lax.stop_gradient(iou)) ** 2)
    loss = jnp.mean(bce + dice) + iou_loss
    return loss, {"loss": loss, "iou_loss": iou_loss, "low_res_iou": jnp.mean(iou[:, 1:].max(axis=1))}


def jitter_prompts(rng: np.random.Generator, bbox: np.ndarray, points: np.ndarray, scale: np.ndarray):
    """Gaussian noise of std `scale` [n] times each box's (w, h) on boxes [n, 4] and points [n, 2, 2]."""
    size = np.stack([bbox[:, 2] - bbox[:, 0] + 1, bbox[:, 3] - bbox[:, 1] + 1], axis=-1) * scale[:, None]
    boxes = bbox + rng.standard_normal(bbox.shape) * np.tile(size, 2)
    pts = points + rng.standard_normal(points.shape) * size[:, None, :]
    return boxes.astype(np.float32), pts.astype(np.float32)


def _optimizer(settings: Sam2StandinSettings, params) -> optax.GradientTransformation:
    """AdamW over everything but the trunk and the position-encoding matrix (a buffer in the
    reference), which stay as drawn."""
    warmup = min(settings.warmup_steps, max(settings.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, warmup,
                                                  max(settings.steps, warmup + 1), settings.learning_rate * 0.05)
    trained = jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[0], "key", "")) != "trunk" and str(getattr(path[-1], "key", "")) != "pe_gaussian",
        params)
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip_norm),
                       optax.adamw(schedule, weight_decay=settings.weight_decay),
                       optax.masked(optax.set_to_zero(), jax.tree.map(lambda t: not t, trained)))


def _schedule_only(settings: Sam2StandinSettings) -> Sam2StandinSettings:
    """`settings` with the fields the compiled step does not depend on set to their defaults."""
    keep = ("steps", "learning_rate", "warmup_steps", "weight_decay", "grad_clip_norm")
    return Sam2StandinSettings(**{f: getattr(settings, f) for f in keep})


@functools.lru_cache(maxsize=8)
def make_train_step(config: sam2.Sam2Config, settings: Sam2StandinSettings, image_hw: tuple[int, int]):
    """(optimizer, jitted (params, opt_state, feats, boxes, points, masks) -> (params, opt_state,
    metrics)); cached, so runs with the same shapes and schedule compile once."""
    optimizer = _optimizer(settings, nn.meta.unbox(sam2.abstract_params(config)))

    def step(params, opt_state, feats, boxes, points, masks):
        grads, metrics = jax.grad(lambda p: standin_loss(config, p, feats, boxes, points, masks, image_hw),
                                  has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return optimizer, jax.jit(step, donate_argnums=(0, 1))


_preprocess = jax.jit(preprocess_image, static_argnames=("image_size",))


@functools.lru_cache(maxsize=8)
def _trunk_fn(config: sam2.Sam2Config):
    return jax.jit(lambda p, x: Sam2(config).apply({"params": p}, preprocess_image(x, config.image_size),
                                                   method=_trunk))


def trunk_features(config: sam2.Sam2Config, params, images: np.ndarray, batch: int = 50) -> list[np.ndarray]:
    """The trunk's stage outputs for uint8 images [N, H, W, 3], each float32[N, ...] (host)."""
    fn = _trunk_fn(config)
    chunks = [fn(params, jnp.asarray(images[s:s + batch])) for s in range(0, len(images), batch)]
    return [np.concatenate([np.asarray(c[level]) for c in chunks]) for level in range(len(chunks[0]))]


def train_sam2_standin(train: SegExamples, val: Optional[SegExamples] = None, out_dir: Optional[str] = None,
                       settings: Sam2StandinSettings = Sam2StandinSettings(),
                       log: Optional[Callable[[str], Any]] = None) -> dict:
    """Trains the SAM2 stand-in (module docstring); returns metrics (`evaluate_sam2` on `val`
    with exact and perturbed prompts, losses, timings) and writes the model directory `out_dir`
    (when given). Deterministic for a seed."""
    log = log or (lambda _: None)
    if len(train) < settings.batch_size:
        raise ValueError(f"SAM2 stand-in: {len(train)} training images, fewer than batch_size={settings.batch_size}")
    start = time.perf_counter()
    config = sam2_config(settings)
    params = init_standin_params(config, settings.seed, settings.attention_gain)
    feats = trunk_features(config, params, train.images)
    image_hw = tuple(int(v) for v in train.masks.shape[1:])
    optimizer, step = make_train_step(config, _schedule_only(settings), image_hw)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng(settings.seed)
    k, b = settings.prompts_per_image, settings.batch_size
    history, recent, done = [], [], 0
    for cycle in range(settings.max_cycles):
        if cycle:  # a warm restart: the schedule (and AdamW's moments) start again from these params
            opt_state = optimizer.init(params)
            log(f"SAM2 stand-in: low-res IoU {np.mean(recent):.3f} < {settings.min_train_iou} after "
                f"{done} steps: another cycle of {settings.steps}")
        for i in range(settings.steps):
            idx = rng.choice(len(train), b, replace=False)
            rows = np.repeat(idx, k)
            boxes, points = jitter_prompts(rng, train.bbox[rows].astype(np.float64),
                                           train.points[rows].astype(np.float64),
                                           rng.uniform(0.0, settings.max_jitter, len(rows)))
            params, opt_state, metrics = step(params, opt_state, [f[idx] for f in feats], boxes, points,
                                              train.masks[rows])
            done += 1
            recent = (recent + [float(metrics["low_res_iou"])])[-50:]
            if done == 1 or done % 50 == 0 or i == settings.steps - 1:
                history.append({"step": done, **{key: float(v) for key, v in metrics.items()}})
                log(f"SAM2 stand-in: step {done} loss {history[-1]['loss']:.4f} "
                    f"low-res IoU {history[-1]['low_res_iou']:.3f} ({time.perf_counter() - start:.1f} s)")
        if np.mean(recent) >= settings.min_train_iou:
            break
    out: dict[str, Any] = {"steps": done, "cycles": cycle + 1, "train_low_res_iou": float(np.mean(recent)),
                           "history": history, "train_seconds": time.perf_counter() - start}
    if val is not None:
        t = time.perf_counter()
        out["validation"] = evaluate_sam2(config, params, val, settings)
        out["eval_seconds"] = time.perf_counter() - t
        log(f"SAM2 stand-in: validation mIoU {out['validation']['miou_exact']:.3f} (exact prompts), "
            f"{out['validation']['miou_perturbed']:.3f} (perturbed by {settings.eval_jitter:g} of the box)")
    if out_dir is not None:
        checkpoint.save_model(out_dir, checkpoint.SAM2_KIND, config, params)
    out["seconds"] = time.perf_counter() - start
    return out


def mask_ious(config: sam2.Sam2Config, params, examples: SegExamples, boxes: np.ndarray, points: np.ndarray,
              batch: int = 50) -> np.ndarray:
    """Per-example IoU of the best-scoring multimask output (`predict_batch`, labels 1, 1) for
    one prompt per example, boxes float[N, 4] and points float[N, 2, 2] in image pixels."""
    n = len(examples)
    hw = tuple(int(v) for v in examples.masks.shape[1:])
    labels = np.ones((batch, 1, 2), np.int32)
    out = []
    for s in range(0, n, batch):
        idx = np.arange(s, s + batch) % n            # the last batch wraps: one compiled shape
        images = _preprocess(jnp.asarray(examples.images[idx]), image_size=config.image_size)
        res = predict_batch(params, images, jnp.asarray(boxes[idx, None], jnp.float32),
                            jnp.asarray(points[idx, None], jnp.float32), labels, hw, config=config, best_only=True)
        mask = np.asarray(res["best_mask"][:, 0])
        truth = examples.masks[idx]
        union = (mask | truth).sum(axis=(1, 2))
        out.append((mask & truth).sum(axis=(1, 2)) / np.maximum(union, 1))
    return np.concatenate(out)[:n]


def evaluate_sam2(config: sam2.Sam2Config, params, examples: SegExamples,
                  settings: Sam2StandinSettings = Sam2StandinSettings()) -> dict:
    """Mean IoU with the ground-truth box + points, and with prompts perturbed by Gaussian noise
    of std `settings.eval_jitter` times the box size (a fixed draw from the seed)."""
    b = min(settings.eval_batch_size, len(examples))
    exact = mask_ious(config, params, examples, examples.bbox, examples.points, b)
    rng = np.random.default_rng(settings.seed + 1)
    boxes, points = jitter_prompts(rng, examples.bbox.astype(np.float64), examples.points.astype(np.float64),
                                   np.full(len(examples), settings.eval_jitter))
    perturbed = mask_ious(config, params, examples, boxes, points, b)
    return {"miou_exact": float(exact.mean()), "miou_perturbed": float(perturbed.mean()),
            "iou_exact_quartiles": np.percentile(exact, [25, 50, 75]).round(3).tolist(),
            "num_samples": len(examples)}
