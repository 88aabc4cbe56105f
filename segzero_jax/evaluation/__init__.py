"""Seg-Zero's evaluation protocol (ReasonSeg gIoU / cIoU) as plain functions.

  answer         the reference answer parser (`parse_segzero`) and a lenient one, by name
  metrics        per-sample I / U under an ignore-region protocol ("segzero", "lisa"), gIoU, cIoU
  examples       dataset records -> `EvalExample` (first question of each image, stable ids)
  policy_inputs  images + questions -> a batch of policy inputs (Seg-Zero's prompt and frame)
  generation     greedy answers through the sampler
  runner         `Evaluator`, `score_batch`, `evaluate_split`: answers -> SAM2 -> metrics
"""

from segzero_jax.evaluation.answer import (PARSERS, Answer, AnswerError, parse_answer, parse_lenient,
                                           parse_segzero, scale_factors)
from segzero_jax.evaluation.examples import EvalExample, RecordExamples, decode_record
from segzero_jax.evaluation.metrics import PROTOCOLS, get_protocol
from segzero_jax.evaluation.policy_inputs import policy_batch
from segzero_jax.evaluation.runner import EvalResult, Evaluator, SampleResult, evaluate_split, score_batch, summarize

__all__ = ["PARSERS", "Answer", "AnswerError", "parse_answer", "parse_lenient", "parse_segzero", "scale_factors",
           "EvalExample", "RecordExamples", "decode_record", "PROTOCOLS", "get_protocol", "policy_batch",
           "EvalResult", "Evaluator", "SampleResult", "evaluate_split", "score_batch", "summarize"]
