"""Stand-ins for the pretrained models, which cannot be downloaded: a small SAM2 trained briefly on
a split's masks with Seg-Zero's box + point prompts, and a small policy warm-started on Seg-Zero's
answer format (the format, not the grounding). Both are written as model directories
(`segzero_jax.checkpoint.save_model`, read by `restore_sam2` / `restore_policy`).

    from segzero_jax import standins
    sam2_metrics = standins.train_sam2_standin(seg_train, seg_val, "WORKDIR/models/sam2",
                                               standins.Sam2StandinSettings(steps=600))
    policy_metrics = standins.warm_start_policy(prompts_train, prompts_val, "WORKDIR/models/warm_start",
                                                standins.WarmStartSettings(steps=150))

The inputs are numpy arrays (`SegExamples`, `PolicyExamples`); `experiments.make_standins` reads
them from a TFDS split through the input pipeline and builds both.
"""

from segzero_jax.standins.answers import TargetMix, format_answer, short_reasoning, warm_start_target
from segzero_jax.standins.examples import PolicyExamples, SegExamples, plain_background_objects
from segzero_jax.standins.greedy import greedy_decode
from segzero_jax.standins.sam2_standin import (Sam2StandinSettings, evaluate_sam2, init_standin_params,
                                               sam2_config, train_sam2_standin)
from segzero_jax.standins.warm_start import WarmStartSettings, evaluate_policy, policy_config, warm_start_policy

__all__ = ["TargetMix", "format_answer", "short_reasoning", "warm_start_target", "PolicyExamples", "SegExamples",
           "plain_background_objects", "greedy_decode", "Sam2StandinSettings", "evaluate_sam2",
           "init_standin_params", "sam2_config", "train_sam2_standin", "WarmStartSettings", "evaluate_policy",
           "policy_config", "warm_start_policy"]
