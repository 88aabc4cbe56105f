"""The laptop default: the whole Seg-Zero pipeline at toy scale on the embedded synthetic data.

`python -m experiments.train --config=experiments/configs/default.py --workdir=runs/default`
builds the synthetic dataset, makes the stand-ins for the pretrained models (a briefly trained
tiny SAM2 and a tiny policy warm-started on the answer format with coarse boxes:
`experiments.make_standins`), evaluates the warm start on the held-out test split (colour-shape
compositions never seen in training), runs GRPO with Seg-Zero's rewards and evaluates the final
policy the same way (WORKDIR/eval/{warm_start,final}/metrics.json, plots in WORKDIR/plots).

Same GRPO recipe as Seg-Zero, scaled down: 112 px images, 8 prompts x 4 samples, short
responses, float32 on CPU, a larger learning rate for a small model.
"""

import ml_collections

from experiments.configs import common


def get_config():
    config = common.reference_config()
    config.model.update(policy_preset="tiny", dtype="float32", remat_policy="none",
                        sam2_preset="test_tiny", standins=True)
    config.data.update(dataset="synthetic", image_size=112, batch_size=8,
                       max_prompt_length=192, seed=0)
    config.data.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
    config.rl.update(group_size=4, max_response_length=64, micro_batch_size=16, update_batch_size=8)
    config.optim.update(learning_rate=2e-4)
    config.train.update(num_steps=100, checkpoint_every=25, log_every=1, eval_every=25,
                        eval_num_samples=50, eval_batch_size=25, eval_max_new_tokens=64,
                        final_eval_split="test", samples_every=10)
    return config
