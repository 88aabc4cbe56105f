"""Tiny random-weight transformers Qwen2.5-VL references and prompt helpers for the tests."""

import numpy as np

IMG, VS, VE = 151655, 151652, 151653


def hf_config(tie: bool = True, fullatt=(1,)):
    from transformers import Qwen2_5_VLConfig
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                          "rope_theta": 50.0}),
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=list(fullatt), window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=tie)


def build_hf_model(tie: bool = True, seed: int = 0, fullatt=(1,)):
    """A float32 eval-mode reference with every weight (norm scales included) drawn at random.

    rope_theta is small so that every M-RoPE frequency turns noticeably over a few positions
    (with the published 1e6 the h/w sections barely rotate over a tiny prompt).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(tie, fullatt)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.normal_(1.0, 0.1)      # RMSNorm scales near 1, still distinct per channel
            else:
                p.normal_(0.0, 0.15)     # large enough for peaked attention and separated logits
    return model



def hf_generate(model, ids, mask, n_new, pixels=None, grid=None):
    """transformers' greedy `generate` (no EOS stop) -> the new tokens int64[B, n_new]."""
    import torch
    kw = {}
    if pixels is not None:
        kw = dict(pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grid),
                  mm_token_type_ids=torch.tensor((ids == IMG).astype(np.int64)))
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), **kw,
                             max_new_tokens=n_new, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[:, ids.shape[1]:].numpy()


def image_row(rs, n_image_tokens, pre, post):
    return ([int(t) for t in rs.randint(0, 2000, pre)] + [VS] + [IMG] * n_image_tokens + [VE]
            + [int(t) for t in rs.randint(0, 2000, post)])


def image_batch(rs, grid, context):
    """Left-padded rows of one image each: image i has grid row `[t, h, w]` (2x2 patches merge
    into one token) between `context[i]` = (tokens before, tokens after) random text tokens.
    -> (ids, mask) int64[B, T], pixels float32[sum t*h*w, 1176], grid."""
    grid = np.asarray(grid)
    ids, mask = left_pad([image_row(rs, int(np.prod(g)) // 4, pre, post) for g, (pre, post) in zip(grid, context)])
    return ids, mask, rs.randn(int(grid.prod(axis=1).sum()), 1176).astype(np.float32), grid


def left_pad(rows, pad_id=0):
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad_id, np.int64)
    mask = np.zeros((len(rows), t), np.int64)
    for b, r in enumerate(rows):
        ids[b, t - len(r):] = r
        mask[b, t - len(r):] = 1
    return ids, mask
