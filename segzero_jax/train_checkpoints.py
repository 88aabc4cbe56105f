"""A training workdir's checkpoints (Orbax `CheckpointManager`) and its best policy.

    WORKDIR/policy_config.json     {"kind": "qwen2_5_vl", "config": {...}}: the trained policy's config
    WORKDIR/checkpoints/<step>/    params/ (the policy), train/ (optimizer state, step, RNG,
                                   counters), data/ (the input iterator's state, JSON)
    WORKDIR/best/                  a model directory (`checkpoint.save_model`) of the policy with
                                   the best validation gIoU so far, and best.json {step, metrics}

Saves are asynchronous (`save` returns while the arrays are written; `wait` blocks); a
checkpoint becomes visible to `latest_step` only once complete, so a run killed mid-save
resumes from the previous one. Params restore on their own (evaluation, export) into target
shardings: `restore_trained_policy(workdir, "newest" | "best" | step, shardings)`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Optional, Union

import jax
import orbax.checkpoint as ocp

from segzero_jax import checkpoint as ckpt

CHECKPOINTS = "checkpoints"
BEST = "best"
POLICY_CONFIG = "policy_config.json"


def is_training_workdir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, POLICY_CONFIG)) and os.path.isdir(os.path.join(path, CHECKPOINTS))


class TrainCheckpoints:
    """Save / restore of (params, train state, data iterator state) by step."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "train", "data"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, params: Any, train: Any, data_state: Optional[bytes] = None) -> bool:
        data = {"iterator": None if data_state is None else data_state.decode("utf-8")}
        return self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train),
            data=ocp.args.JsonSave(data)), force=True)

    def restore(self, step: int, abstract_params: Any, abstract_train: Any) -> tuple[Any, Any, Optional[bytes]]:
        """(params, train, data iterator state) of `step`, into the abstract targets' shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params), train=ocp.args.StandardRestore(abstract_train),
            data=ocp.args.JsonRestore()))
        state = out["data"].get("iterator") if out["data"] else None
        return out["params"], out["train"], None if state is None else state.encode("utf-8")

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        return self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params)))["params"]

    def params_metadata(self, step: int) -> Any:
        meta = self.manager.item_metadata(step)["params"]
        tree = getattr(meta, "tree", meta)
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def write_policy_config(workdir: str, config: Any) -> None:
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, POLICY_CONFIG), "w") as f:
            json.dump({"kind": ckpt.POLICY_KIND, "config": ckpt._config_dict(config)}, f, indent=2, sort_keys=True)


def read_policy_config(workdir: str):
    from segzero_jax import config_io
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
    path = os.path.join(workdir, POLICY_CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a training workdir")
    with open(path) as f:
        blob = json.load(f)
    return config_io.from_dict(Qwen2_5_VLConfig, blob.get("config", {}), path)


def save_best(workdir: str, config: Any, params: Any, step: int, metrics: dict) -> None:
    """Replaces WORKDIR/best with `params` (a model directory) and its step and metrics."""
    best = os.path.join(workdir, BEST)
    tmp = best + ".tmp"
    if jax.process_index() == 0 and os.path.exists(tmp):
        shutil.rmtree(tmp)
    ckpt.save_model(tmp, ckpt.POLICY_KIND, config, params)
    if jax.process_index() == 0:
        with open(os.path.join(tmp, "best.json"), "w") as f:
            json.dump({"step": int(step), "metrics": metrics}, f, indent=2, sort_keys=True)
        if os.path.exists(best):
            shutil.rmtree(best)
        os.replace(tmp, best)


def best_record(workdir: str) -> Optional[dict]:
    path = os.path.join(workdir, BEST, "best.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def restore_trained_policy(workdir: str, which: Union[str, int] = "newest", shardings: ckpt.Shardings = None):
    """(Qwen2_5_VLConfig, params) of a training workdir's newest, best or given step."""
    if which == "best":
        best = os.path.join(workdir, BEST)
        if not os.path.isdir(best):
            raise FileNotFoundError(f"{best} is missing: the run has not evaluated a checkpoint yet")
        return ckpt.restore_policy(best, shardings)
    config = read_policy_config(workdir)
    manager = TrainCheckpoints(workdir, async_save=False)
    try:
        step = manager.latest_step() if which == "newest" else int(which)
        if step is None or step not in manager.all_steps():
            raise FileNotFoundError(f"{manager.directory}: no checkpoint "
                                    f"{'yet' if step is None else f'for step {step}'}")
        abstract = manager.params_metadata(step)
        if callable(shardings):
            shardings = shardings(abstract)
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: device, abstract)
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
        return config, manager.restore_params(step, target)
    finally:
        manager.close()
