"""Seg-Zero's evaluation of a split: answers (generated or given) -> parse -> SAM2 -> gIoU / cIoU.

Per sample (`score_batch`): the answer is parsed on the policy's `image_size` frame and rescaled
to the original image (`answer.parse_answer`), SAM2 is prompted with its box and both points
(`segment.Segmenter`), and the best mask is scored against the target under an ignore-region
protocol (`metrics`). A failed parse or SAM2 call counts I = 0, U = the ground-truth area.

    evaluator = Evaluator(examples, Segmenter(sam2_config, sam2_params), tokenizer=tok,
                          policy_config=policy_config)
    result = evaluator.generate(policy_params)            # greedy answers, then scores
    result = evaluator.score_responses({"id": "response text", ...})
    result.metrics   # {"giou", "ciou", "num_samples", "parse_failures", ...}; result.samples

`evaluate_split(...)` is the one-call form that returns the metrics dict (for a trainer that
evaluates every K steps, build one `Evaluator` and call it each time: its compiles are kept).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from segzero_jax.evaluation import answer as answer_lib
from segzero_jax.evaluation import metrics as metrics_lib
from segzero_jax.evaluation.examples import EvalExample
from segzero_jax.evaluation.policy_inputs import policy_batch
from segzero_jax.models.qwen2_5_vl.processor import SEGZERO_IMAGE_SIZE


@dataclasses.dataclass
class SampleResult:
    """One scored sample; bbox / points on the original image (None when the parse failed)."""

    id: str
    response: str
    think: str
    bbox: Optional[list[int]]
    points: Optional[list[list[int]]]
    intersection: int
    union: int
    iou: float
    parse_error: Optional[str] = None
    sam2_error: Optional[str] = None
    sam2_score: Optional[float] = None
    num_tokens: Optional[int] = None
    stopped: Optional[bool] = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EvalResult:
    metrics: dict
    samples: list[SampleResult]


def score_batch(examples: Sequence[EvalExample], texts: Sequence[str], segmenter, *,
                image_size: int = SEGZERO_IMAGE_SIZE, parser: str = "segzero",
                protocol: str = "segzero") -> list[SampleResult]:
    """Parses, segments and scores `texts[i]` as the answer to `examples[i]`."""
    if len(examples) != len(texts):
        raise ValueError(f"{len(examples)} examples and {len(texts)} responses")
    rule = metrics_lib.get_protocol(protocol)
    parse = answer_lib.get_parser(parser)
    parsed: list[Any] = []
    for ex, text in zip(examples, texts):
        try:
            parsed.append(parse(text, *answer_lib.scale_factors(ex.width, ex.height, image_size)))
        except answer_lib.AnswerError as err:
            parsed.append(err)
    todo = [i for i, p in enumerate(parsed) if isinstance(p, answer_lib.Answer)]
    segs = dict(zip(todo, segmenter([examples[i].image for i in todo], [parsed[i].bbox for i in todo],
                                    [parsed[i].points for i in todo]))) if todo else {}
    out = []
    for i, (ex, text, p) in enumerate(zip(examples, texts, parsed)):
        if isinstance(p, answer_lib.AnswerError):
            inter, union = rule.failure(ex.mask, ex.ignore_mask)
            out.append(SampleResult(ex.id, text, "", None, None, inter, union, rule.iou(inter, union),
                                    parse_error=str(p)))
            continue
        seg = segs[i]
        if seg.mask is None:
            inter, union = rule.failure(ex.mask, ex.ignore_mask)
        else:
            inter, union = rule.intersection_union(seg.mask, ex.mask, ex.ignore_mask)
        out.append(SampleResult(ex.id, text, p.think, list(p.bbox), [list(q) for q in p.points], inter, union,
                                rule.iou(inter, union), sam2_error=seg.failure,
                                sam2_score=None if seg.mask is None else seg.score))
    return out


def summarize(samples: Sequence[SampleResult], **extra) -> dict:
    """gIoU, cIoU, counts of failures, and `extra` fields."""
    out = metrics_lib.summarize([s.intersection for s in samples], [s.union for s in samples],
                                [s.iou for s in samples])
    out["parse_failures"] = sum(s.parse_error is not None for s in samples)
    out["sam2_failures"] = sum(s.sam2_error is not None for s in samples)
    out["empty_unions"] = sum(s.union == 0 for s in samples)
    generated = [s for s in samples if s.num_tokens is not None]
    if generated:
        out["mean_response_tokens"] = float(np.mean([s.num_tokens for s in generated]))
        out["truncated_responses"] = sum(not s.stopped for s in generated)
    out.update(extra)
    return out


def response_order(ids: Sequence[str], responses: Mapping[str, str], allow_missing: bool = False) -> list[int]:
    """Indices into `ids` of the samples that have a response. An id of `responses` that `ids`
    lacks is an error naming it; so is a sample without one, unless `allow_missing`."""
    known = set(ids)
    unknown = [k for k in responses if k not in known]
    if unknown:
        raise ValueError(f"{len(unknown)} response id(s) are not in the split, e.g. {unknown[:3]}")
    order = [i for i, k in enumerate(ids) if k in responses]
    if len(order) < len(ids) and not allow_missing:
        missing = [k for k in ids if k not in responses]
        raise ValueError(f"no response for {len(missing)} sample(s) of the split, e.g. {missing[:3]}")
    return order


class Evaluator:
    """Scores a fixed list of samples; see the module docstring.

    examples: a sequence of `EvalExample` (e.g. `RecordExamples`); segmenter: a
    `segment.Segmenter` (its batch size is SAM2's); tokenizer + policy_config (or a ready
    `generator(params, batch) -> [Response]`) are needed only to generate."""

    def __init__(self, examples: Sequence[EvalExample], segmenter, *, tokenizer=None, policy_config=None,
                 generator: Optional[Callable] = None, image_size: int = SEGZERO_IMAGE_SIZE,
                 batch_size: int = 8, max_new_tokens: int = 1024, parser: str = "segzero",
                 protocol: str = "segzero", mesh=None, rules=None, progress: bool = True):
        answer_lib.get_parser(parser)
        metrics_lib.get_protocol(protocol)
        self.examples, self.segmenter = examples, segmenter
        self.tokenizer, self.policy_config = tokenizer, policy_config
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.max_new_tokens, self.parser, self.protocol = int(max_new_tokens), parser, protocol
        self.mesh, self.rules, self.progress = mesh, rules, progress
        self._generator = generator

    def _settings(self) -> dict:
        return {"parser": self.parser, "protocol": self.protocol, "image_size": self.image_size}

    def _bar(self, total: int, what: str):
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=what, unit="sample", disable=not self.progress)

    @property
    def generator(self):
        if self._generator is None:
            if self.tokenizer is None or self.policy_config is None:
                raise ValueError("generating answers needs tokenizer= and policy_config= (or generator=)")
            from segzero_jax.evaluation.generation import GreedyGenerator
            self._generator = GreedyGenerator(self.policy_config, self.tokenizer,
                                              max_new_tokens=self.max_new_tokens, mesh=self.mesh, rules=self.rules)
        return self._generator

    def _score(self, examples, texts) -> list[SampleResult]:
        return score_batch(examples, texts, self.segmenter, image_size=self.image_size, parser=self.parser,
                           protocol=self.protocol)

    def generate(self, policy_params) -> EvalResult:
        """Greedy answers for every sample, scored."""
        generator, start, samples = self.generator, time.perf_counter(), []
        with self._bar(len(self.examples), "evaluate") as bar:
            for lo in range(0, len(self.examples), self.batch_size):
                chunk = [self.examples[i] for i in range(lo, min(lo + self.batch_size, len(self.examples)))]
                batch = policy_batch([ex.image for ex in chunk], [ex.question for ex in chunk], self.tokenizer,
                                     image_size=self.image_size, batch_size=self.batch_size)
                responses = generator(policy_params, batch)
                scored = self._score(chunk, [r.text for r in responses])
                for s, r in zip(scored, responses):
                    s.num_tokens, s.stopped = r.num_tokens, r.stopped
                samples.extend(scored)
                bar.update(len(chunk))
        seconds = time.perf_counter() - start
        return EvalResult(summarize(samples, **self._settings(), max_new_tokens=self.max_new_tokens,
                                    seconds=seconds, samples_per_second=len(samples) / max(seconds, 1e-9)), samples)

    __call__ = generate

    def score_responses(self, responses: Mapping[str, str], allow_missing: bool = False) -> EvalResult:
        """Scores given answers (id -> text). An id the samples do not hold is an error naming it;
        so is a sample without an answer, unless `allow_missing` (then only answered ones count)."""
        ids = [self._id(i) for i in range(len(self.examples))]
        order = response_order(ids, responses, allow_missing)
        start, samples = time.perf_counter(), []
        with self._bar(len(order), "score") as bar:
            for lo in range(0, len(order), self.batch_size):
                chunk = [self.examples[i] for i in order[lo:lo + self.batch_size]]
                samples.extend(self._score(chunk, [responses[ex.id] for ex in chunk]))
                bar.update(len(chunk))
        seconds = time.perf_counter() - start
        return EvalResult(summarize(samples, **self._settings(), seconds=seconds,
                                    missing_responses=len(ids) - len(order)), samples)

    def _id(self, i: int) -> str:
        ids = getattr(self.examples, "ids", None)
        return ids[i] if ids is not None else self.examples[i].id


def evaluate_split(policy_config, policy_params, sam2_config, sam2_params, examples: Sequence[EvalExample],
                   tokenizer, *, batch_size: int = 8, **kwargs) -> dict:
    """Greedy generation + scoring of `examples` with params in memory; returns the metrics dict."""
    from segzero_jax.segment import Segmenter
    mesh = kwargs.get("mesh")
    segmenter = Segmenter(sam2_config, sam2_params, batch_size=batch_size, mesh=mesh)
    evaluator = Evaluator(examples, segmenter, tokenizer=tokenizer, policy_config=policy_config,
                          batch_size=batch_size, **kwargs)
    return evaluator.generate(policy_params).metrics
