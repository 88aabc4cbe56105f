"""Seg-Zero rewards (host reference and on-device) and GRPO math."""

from segzero_jax.rl.byte_table import (ByteTable, byte_table_for_tokenizer,
                                       byte_table_from_token_bytes, response_bytes,
                                       response_lengths)
from segzero_jax.rl.grpo import (ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_PENALTIES,
                                 aggregate, compute_advantages, entropy_from_logits,
                                 group_advantages, group_advantages_2d, grpo_loss, kl_penalty,
                                 policy_loss_terms)
from segzero_jax.rl.answer_fields import FIELD_RESOLVERS
from segzero_jax.rl.reward_device import device_rewards
from segzero_jax.rl.reward_host import COMPONENTS, HOST_REWARDS, host_reward, parse_ground_truth

__all__ = ["ByteTable", "byte_table_for_tokenizer", "byte_table_from_token_bytes",
           "response_bytes", "response_lengths", "ADVANTAGE_ESTIMATORS", "AGGREGATIONS",
           "KL_PENALTIES", "compute_advantages", "aggregate",
           "entropy_from_logits", "group_advantages", "group_advantages_2d", "grpo_loss",
           "kl_penalty", "policy_loss_terms", "FIELD_RESOLVERS", "device_rewards", "COMPONENTS",
           "HOST_REWARDS", "host_reward", "parse_ground_truth"]
