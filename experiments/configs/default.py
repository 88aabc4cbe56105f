"""The laptop default: a tiny random-initialised policy and SAM2 on the embedded synthetic data.

Same GRPO recipe as Seg-Zero, scaled down: 112 px images, 8 prompts x 4 samples, short
responses, float32 on CPU, a larger learning rate for a small model starting from scratch.
"""

import ml_collections

from experiments.configs import common


def get_config():
    config = common.reference_config()
    config.model.update(policy_preset="tiny", dtype="float32", remat_policy="none",
                        sam2_preset="test_tiny")
    config.data.update(dataset="synthetic", image_size=112, batch_size=8,
                       max_prompt_length=256, seed=0)
    config.data.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
    config.rl.update(group_size=4, max_response_length=64, micro_batch_size=16, update_batch_size=8)
    config.optim.update(learning_rate=1e-4)
    config.train.update(num_steps=200, checkpoint_every=50, log_every=5)
    return config
