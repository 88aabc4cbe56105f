"""SAM2 (image path) in Flax: Hiera encoder, FPN neck, prompt encoder, mask decoder, predictor.

Public API (the same pattern as `segzero_jax.models.qwen2_5_vl`):
  get_preset(name, **overrides), PRESETS                     configs (hiera_tiny ... hiera_large, test_tiny)
  load_checkpoint(path, config=None, *, shardings=None, mesh=None, **overrides) -> (config, params)
                                                             Meta's `sam2_hiera_*.pt` or transformers' safetensors
  SamPredictor(config, params).set_image(img).predict(...)   the reference image predictor
  predict_batch(params, images, boxes, points, labels, orig_hw, config=...)   jitted batch path
  low_res_masks(params, images, boxes, points, labels, config=...)   encoder + decoder only
  Sam2Config, Sam2 (linen module), init_params, random_params, abstract_params
"""

from segzero_jax.models.sam2.config import PRESETS, Sam2Config, get_preset
from segzero_jax.models.sam2.convert import convert_state_dict, load_checkpoint
from segzero_jax.models.sam2.model import Sam2, abstract_params, init_params, random_params
from segzero_jax.models.sam2.predictor import SamPredictor, low_res_masks, predict_batch, preprocess_image

__all__ = ["PRESETS", "Sam2Config", "get_preset", "convert_state_dict", "load_checkpoint", "Sam2",
           "abstract_params", "init_params", "random_params", "SamPredictor", "low_res_masks", "predict_batch",
           "preprocess_image"]
