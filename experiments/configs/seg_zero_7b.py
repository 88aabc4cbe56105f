"""Seg-Zero's released recipe: Qwen2.5-VL-7B policy, SAM2-Large, RefCOCOg 9k, GRPO 16x8.

    python -m experiments.train --config=experiments/configs/seg_zero_7b.py --workdir=DIR \
        --config.model.policy_checkpoint=ckpt/policy --config.data.manual_dir=MANUAL
"""

from experiments.configs import common


def get_config():
    return common.reference_config()
