r"""GRPO training of the Seg-Zero policy: the project's main job.

  python -m experiments.train --config=experiments/configs/default.py --workdir=runs/default
  python -m experiments.train --config=experiments/configs/seg_zero_7b.py --workdir=runs/7b \
      --config.model.policy_checkpoint=ckpt/seg_zero_init/policy --config.rl.group_size=16

`--workdir` resumes from its newest checkpoint (params, optimizer state, step, RNG and the input
iterator's position). Any config field can be overridden on the command line; the config is
checked at start-up and a bad field is named. SIGTERM (a preempted VM) saves a checkpoint and
exits cleanly.

Writes under WORKDIR: checkpoints/ and policy_config.json (`segzero_jax.train_checkpoints`),
best/ (the policy with the best validation gIoU, a model directory), metrics.jsonl and
tensorboard/ (per-step metrics), samples.jsonl (decoded responses every `train.samples_every`
steps), eval/<step>/metrics.json, and with `model.standins` the stand-in models under models/.
`--compile_only` lowers and compiles the train step for this host's devices or for
`--topology` (a TPU slice such as v5p:2x2x1, from any host with libtpu) and prints per-chip
memory, exiting non-zero when the step does not fit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Optional

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/configs/*.py)",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, samples (resumed if present)")
flags.DEFINE_bool("compile_only", False, "compile the train step, print its memory per chip, and exit")
flags.DEFINE_string("topology", "", "with --compile_only: a TPU topology (e.g. v5p:2x2x1) instead of this host")
flags.DEFINE_integer("num_slices", 1, "with --topology: number of slices")
flags.DEFINE_bool("progress", True, "show a progress bar")


class RunError(Exception):
    """A problem with the run's inputs, reported as one line."""


# -- logging ----------------------------------------------------------------------------------

class MetricWriter:
    """Per-step scalars to WORKDIR/metrics.jsonl and TensorBoard event files (tensorboardX: no
    TensorFlow needed); only process 0 writes."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # metrics.jsonl still has everything
                logging.warning("tensorboardX is not installed: no TensorBoard event files")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, float(v), int(step))
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def write_samples(workdir: str, step: int, tokenizer, batch: dict, out: dict, n: int, group: int) -> None:
    """A few decoded responses of this step (one per prompt first) to WORKDIR/samples.jsonl."""
    import numpy as np
    tokens, lengths, rewards = (np.asarray(out[k]) for k in ("tokens", "lengths", "rewards"))
    questions = batch.get("question")
    with open(os.path.join(workdir, "samples.jsonl"), "a") as f:
        for r in [i * group for i in range(len(tokens) // group)][:n]:
            text = tokenizer.decode([int(t) for t in tokens[r, :lengths[r]]])
            q = None if questions is None else questions[r // group]
            f.write(json.dumps({"step": int(step), "row": int(r), "question": None if q is None else str(q),
                                "response": text, "reward": float(rewards[r])}) + "\n")


# -- set-up -----------------------------------------------------------------------------------

def settings_from_config(config) -> Any:
    from segzero_jax.rl.trainer import GRPOSettings
    rl = config.rl
    return GRPOSettings(
        group_size=rl.group_size, max_new_tokens=rl.max_response_length, temperature=rl.temperature,
        top_p=rl.top_p, top_k=rl.top_k, reward=rl.reward, reward_max_bytes=rl.reward_max_bytes,
        image_size=config.data.image_size, advantage_estimator=rl.advantage_estimator,
        policy_loss=rl.policy_loss, clip_ratio_low=rl.clip_ratio_low, clip_ratio_high=rl.clip_ratio_high,
        kl_coef=rl.kl_coef, kl_kind=rl.kl_kind, entropy_coef=rl.entropy_coef,
        loss_aggregation=rl.loss_aggregation, update_batch_size=rl.update_batch_size,
        micro_batch_size=rl.micro_batch_size, ppo_epochs=rl.ppo_epochs,
        skip_equal_reward_groups=rl.skip_equal_reward_groups, overlong_buffer=rl.overlong_buffer,
        overlong_penalty=rl.overlong_penalty, freeze_vision=config.model.freeze_vision,
        chunk_size=rl.logits_chunk_size, decode_layout=rl.decode_layout)


def optimizer_from_config(config, params) -> Any:
    from segzero_jax.rl.trainer import make_optimizer, trainable_mask
    o = config.optim
    mask = trainable_mask(params, True) if config.model.freeze_vision else None
    return make_optimizer(o.learning_rate, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps,
                          grad_clip_norm=o.grad_clip_norm, warmup_steps=o.warmup_steps, mask=mask)


def policy_config_from(config):
    from segzero_jax.models.qwen2_5_vl import preset
    m = config.model
    return preset(m.policy_preset, dtype=m.dtype, param_dtype=m.param_dtype, remat_policy=m.remat_policy,
                  attention_impl=m.attention_impl)


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise RunError(f"{what} {path} does not exist")
    return path


def load_policy(config, mesh, rules, seed: int):
    """(policy config, params sharded by their logical axes, tokenizer)."""
    import flax.linen as nn
    import jax

    from segzero_jax import checkpoint
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, dummy_inputs
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer
    from segzero_jax.parallel import logical_shardings, sharded_init

    m = config.model
    if m.policy_checkpoint:
        directory = _require(m.policy_checkpoint, "config.model.policy_checkpoint:")
        kind, fields = checkpoint.load_model_config(directory)
        if kind != checkpoint.POLICY_KIND:
            raise RunError(f"config.model.policy_checkpoint: {directory} holds a {kind!r} model, not a policy")
        from segzero_jax import config_io
        from segzero_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
        stored = config_io.from_dict(Qwen2_5_VLConfig, fields, f"{directory}/config.json")
        cfg = stored.replace(dtype=m.dtype, param_dtype=m.param_dtype, remat_policy=m.remat_policy,
                             attention_impl=m.attention_impl, scan_layers=True)
        shardings = logical_shardings(jax.eval_shape(
            lambda r: Qwen2_5_VL(cfg).init(r, **dummy_inputs(cfg))["params"], jax.random.PRNGKey(0)), mesh, rules)
        _, params = checkpoint.restore_policy(directory, shardings)
        params = jax.tree.map(lambda a, s: jax.device_put(a.astype(cfg.weight_dtype), s), params, shardings)
        tok_dir = os.path.join(directory, "tokenizer")
        if not os.path.isdir(tok_dir):
            tok_dir = os.path.join(os.path.dirname(os.path.abspath(directory)), "tokenizer")
        tokenizer = (QwenTokenizer.from_file(tok_dir) if os.path.isfile(os.path.join(tok_dir, "tokenizer.json"))
                     else QwenTokenizer.default())
        return cfg, params, tokenizer
    cfg = policy_config_from(config)
    init = lambda r: Qwen2_5_VL(cfg).init(r, **dummy_inputs(cfg))["params"]  # noqa: E731
    boxed, _ = sharded_init(init, mesh, rules, jax.random.PRNGKey(seed))
    return cfg, nn.unbox(boxed), QwenTokenizer.default()


def load_sam2_for_eval(config, mesh):
    """(SAM2 config, params) for evaluation: config.model.sam2_checkpoint or a random preset."""
    import jax

    from segzero_jax.models.sam2 import get_preset
    from segzero_jax.models.sam2.model import random_params
    path = config.model.sam2_checkpoint
    if path:
        from experiments.model_loading import load_sam2
        return load_sam2(_require(path, "config.model.sam2_checkpoint:"), config.model.sam2_preset, mesh)
    logging.warning("config.model.sam2_checkpoint is empty: evaluating with a random %s SAM2 (masks are noise)",
                    config.model.sam2_preset)
    cfg = get_preset(config.model.sam2_preset)
    return cfg, random_params(cfg, jax.random.PRNGKey(0))


def build_standins(config, workdir: str):
    """Makes (once) the stand-in SAM2 and warm-start policy under WORKDIR/models
    (`experiments.make_standins`), and points the config at them."""
    from experiments import make_standins
    from segzero_jax.standins import Sam2StandinSettings, WarmStartSettings
    d = config.data
    data = {"dataset": d.dataset, "data_dir": d.data_dir or None, "image_size": d.image_size,
            "max_prompt_length": d.max_prompt_length}
    seed = config.train.seed
    make_standins.build_standins(
        workdir, data, sam2=Sam2StandinSettings(seed=seed),
        policy=WarmStartSettings(seed=seed, preset=config.model.policy_preset, dtype=config.model.dtype,
                                 response_tokens=min(WarmStartSettings.response_tokens, config.rl.max_response_length),
                                 eval_max_new_tokens=config.rl.max_response_length, reward=config.rl.reward))
    models = os.path.join(workdir, "models")
    with config.unlocked():
        config.model.policy_checkpoint = os.path.join(models, make_standins.POLICY_DIR)
        config.model.sam2_checkpoint = os.path.join(models, make_standins.SAM2_DIR)
    return config


def global_batch(batch: dict, mesh, rules) -> dict:
    """The per-process numpy batch as global arrays, rows over the data axes."""
    import jax
    import numpy as np

    from segzero_jax.parallel import named_sharding
    out = {}
    for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "bbox", "points"):
        a = np.asarray(batch[k])
        if k == "image_grid_thw":   # a host value (it plans the vision layout): every process's rows
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                a = np.asarray(multihost_utils.process_allgather(a, tiled=True))
            out[k] = a.astype(np.int32)
            continue
        global_shape = (a.shape[0] * jax.process_count(),) + a.shape[1:]
        sharding = named_sharding(("act_batch",) + (None,) * (a.ndim - 1), global_shape, mesh, rules)
        out[k] = jax.make_array_from_process_local_data(sharding, a, global_shape)
    return out


def batch_shardings_of(batch: dict, mesh) -> dict:
    from segzero_jax.parallel.sharding import replicated
    return {k: getattr(v, "sharding", None) if hasattr(v, "sharding") else replicated(mesh) for k, v in batch.items()}


def evaluation_examples(config, split: str, limit: int):
    from experiments.evaluate import load_split
    d = config.data
    return load_split(d.dataset, split, d.data_dir or None, d.manual_dir or None, None, limit or None)


def make_evaluator(config, policy_cfg, sam2, examples, tokenizer, mesh):
    """One `Evaluator` for the run (its compiled generator and SAM2 are kept between evaluations)."""
    from segzero_jax.evaluation import Evaluator
    from segzero_jax.segment import Segmenter
    t = config.train
    return Evaluator(examples, Segmenter(sam2[0], sam2[1], batch_size=t.eval_batch_size, mesh=mesh),
                     tokenizer=tokenizer, policy_config=policy_cfg, image_size=config.data.image_size,
                     batch_size=t.eval_batch_size, max_new_tokens=t.eval_max_new_tokens, mesh=mesh,
                     progress=False)


def run_evaluation(evaluator, params, out_dir: str, extra: Optional[dict] = None) -> dict:
    """Greedy generation + Seg-Zero scoring; writes out_dir/metrics.json and samples.jsonl."""
    from experiments.evaluate import write_outputs
    return write_outputs(out_dir, evaluator.generate(params), extra or {})


# -- the loop ---------------------------------------------------------------------------------

class _Preempted:
    """SIGTERM sets a flag that the loop reads after each step (save, then exit cleanly)."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def train(config, workdir: str, progress: bool = True) -> dict:
    """The whole run; returns the last step's metrics."""
    import jax
    import jax.numpy as jnp
    from tqdm.auto import tqdm

    from data_pipelines.input_pipeline import make_input_pipeline
    from segzero_jax import train_checkpoints as tc
    from segzero_jax.parallel import make_mesh
    from segzero_jax.rl import trainer as T
    from segzero_jax.rl.byte_table import byte_table_for_tokenizer

    os.makedirs(workdir, exist_ok=True)
    if config.model.standins:
        config = build_standins(config, workdir)
    mesh = make_mesh(tuple(config.mesh.shape))
    rules = tuple(tuple(r) for r in config.mesh.axis_rules)
    t = config.train
    policy_cfg, params, tokenizer = load_policy(config, mesh, rules, t.seed)
    settings = settings_from_config(config)
    tx = optimizer_from_config(config, params)
    tc.write_policy_config(workdir, policy_cfg)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "run_config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    ref = jax.tree.map(jnp.copy, params) if settings.uses_reference else None
    data_cfg = dict(config.data.to_dict(), data_dir=config.data.data_dir or None,
                    manual_dir=config.data.manual_dir or None)
    loader = make_input_pipeline(data_cfg, tokenizer=tokenizer)
    iterator = iter(loader)

    checkpoints = tc.TrainCheckpoints(workdir, max_to_keep=t.max_checkpoints)
    param_shardings = jax.tree.map(lambda a: a.sharding, params)
    state_shardings = T.train_state_shardings(params, param_shardings, tx, mesh)
    state = jax.jit(lambda p: T.init_train_state(p, tx, jax.random.PRNGKey(t.seed)),
                    out_shardings=state_shardings)(params)
    start = checkpoints.latest_step()
    if start is not None:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        p, rest, data_state = checkpoints.restore(start, abstract.params, abstract.replace(params=None))
        state = rest.replace(params=p)
        if data_state is not None:
            iterator.set_state(data_state)
        logging.info("resumed %s from step %d", workdir, start)
    start = int(state.step)

    byte_table = byte_table_for_tokenizer(tokenizer)
    first = next(iterator)
    first_global = global_batch(first, mesh, rules)
    layouts = T.host_layouts(policy_cfg, settings, first_global["image_grid_thw"])
    batch_shardings = batch_shardings_of(first_global, mesh)
    step_fn = T.make_train_step(policy_cfg, settings, tx, byte_table, layouts, mesh=mesh, rules=rules,
                                state_shardings=state_shardings,
                                ref_shardings=param_shardings if ref is not None else None,
                                batch_shardings=batch_shardings)
    evaluator = final_evaluator = None
    if t.eval_every or t.final_eval_split:
        sam2 = load_sam2_for_eval(config, mesh)
    if t.eval_every:
        evaluator = make_evaluator(config, policy_cfg, sam2,
                                   evaluation_examples(config, t.eval_split, t.eval_num_samples), tokenizer, mesh)
    if t.final_eval_split:
        final_evaluator = make_evaluator(config, policy_cfg, sam2, evaluation_examples(
            config, t.final_eval_split, t.final_eval_num_samples), tokenizer, mesh)
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    preempted = _Preempted()
    best = (tc.best_record(workdir) or {}).get("metrics", {}).get("giou", -1.0)
    metrics: dict = {}
    batch = first
    if start == 0 and final_evaluator is not None:
        ev = run_evaluation(final_evaluator, state.params, os.path.join(workdir, "eval", "warm_start"),
                            {"split": t.final_eval_split, "step": 0})
        logging.info("initial policy on %s: gIoU %.4f cIoU %.4f", t.final_eval_split, ev["giou"], ev["ciou"])
    if start == 0 and evaluator is not None:
        ev = run_evaluation(evaluator, state.params, os.path.join(workdir, "eval", "step_0"),
                            {"split": t.eval_split, "step": 0})
        writer.write(0, {f"eval/{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
    bar = tqdm(total=t.num_steps, initial=start, desc="grpo", disable=not progress or jax.process_index() != 0)
    try:
        for step in range(start + 1, t.num_steps + 1):
            tick = time.perf_counter()
            state, out = step_fn(state, ref, global_batch(batch, mesh, rules))
            scalars = jax.device_get(out["metrics"])
            seconds = time.perf_counter() - tick
            metrics = {k: float(v) for k, v in scalars.items()}
            metrics.update({"step_seconds": seconds, "learning_rate": _lr(config, step),
                            "generated_tokens_per_second": metrics["generated_tokens"] / seconds,
                            "trained_tokens_per_second": metrics["trained_tokens"] / seconds})
            if int(metrics["nonfinite_streak"]) >= t.max_nonfinite_steps:
                raise RunError(f"step {step}: {int(metrics['nonfinite_streak'])} steps in a row had a non-finite "
                               f"loss or gradient (train.max_nonfinite_steps={t.max_nonfinite_steps}); stopping")
            if step % t.log_every == 0 or step == t.num_steps:
                writer.write(step, metrics)
            if t.num_logged_samples and (step % t.samples_every == 0 or step == 1) and jax.process_index() == 0:
                write_samples(workdir, step, tokenizer, batch, jax.device_get(out), t.num_logged_samples,
                              settings.group_size)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", step_s=f"{seconds:.2f}")
            if t.eval_every and (step % t.eval_every == 0 or step == t.num_steps):
                ev = run_evaluation(evaluator, state.params, os.path.join(workdir, "eval", f"step_{step}"),
                                    {"split": t.eval_split, "step": step})
                writer.write(step, {f"eval/{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
                if ev["giou"] > best:
                    best = ev["giou"]
                    tc.save_best(workdir, policy_cfg, state.params, step, ev)
            # The iterator's state is saved before the next batch is drawn: a resumed run draws it.
            if step % t.checkpoint_every == 0 or step == t.num_steps or preempted.requested:
                checkpoints.save(step, state.params, state.replace(params=None), iterator.get_state())
            if preempted.requested:
                logging.warning("SIGTERM: saved step %d, exiting", step)
                break
            batch = next(iterator, None) if step < t.num_steps else None
            if batch is None and step < t.num_steps:
                logging.warning("the input pipeline ran out after step %d", step)
                break
        if int(state.step) == t.num_steps and final_evaluator is not None:
            ev = run_evaluation(final_evaluator, state.params, os.path.join(workdir, "eval", "final"),
                                {"split": t.final_eval_split, "step": t.num_steps})
            metrics.update({f"final/{k}": v for k, v in ev.items() if isinstance(v, (int, float))})
            if jax.process_index() == 0:
                write_report(config, workdir, policy_cfg, state.params, tokenizer, final_evaluator)
    finally:
        bar.close()
        checkpoints.close()
        writer.close()
    return metrics


def write_report(config, workdir: str, policy_cfg, params, tokenizer, evaluator) -> None:
    """Plots of the run's metrics and overlays of a few held-out predictions (WORKDIR/plots)."""
    from experiments import run_report
    from segzero_jax.inference import SegZeroPipeline
    try:
        paths = run_report.plot_metrics(workdir)
    except ImportError:
        logging.warning("matplotlib is not installed: no plots (pip install -e \".[data]\")")
        paths = []
    pipeline = SegZeroPipeline(policy_cfg, params, tokenizer, evaluator.segmenter,
                               image_size=config.data.image_size, max_new_tokens=config.train.eval_max_new_tokens,
                               generator=evaluator.generator)
    paths += run_report.write_overlays(workdir, pipeline, evaluator.examples, config.train.num_report_overlays)
    logging.info("wrote %s", ", ".join(paths))


def _lr(config, step: int) -> float:
    """The learning rate of update `step`, from the optimizer's own schedule."""
    from segzero_jax.rl.trainer import learning_rate_schedule
    o = config.optim
    return float(learning_rate_schedule(o.learning_rate, o.warmup_steps)(step))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from experiments.configs import common
    from segzero_jax.checkpoint import CheckpointError
    config = FLAGS.config
    if config is None:
        raise app.UsageError("--config is required (e.g. --config=experiments/configs/default.py)")
    if not FLAGS.workdir and not FLAGS.compile_only:
        raise app.UsageError("--workdir is required")
    try:
        common.validate(config)
    except common.ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if FLAGS.compile_only:
        from experiments import train_compile
        sys.exit(train_compile.compile_only(config, FLAGS.topology, FLAGS.num_slices))
    try:
        metrics = train(config, FLAGS.workdir, progress=FLAGS.progress)
    except (RunError, FileNotFoundError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({k: round(v, 6) for k, v in metrics.items()}, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
