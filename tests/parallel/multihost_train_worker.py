"""One process of the GRPO training test across processes: two steps, save, restore, a third.

    python multihost_train_worker.py pair PORT PROCESS_ID WORKDIR   (one of two processes, 2 devices each)
    python multihost_train_worker.py single WORKDIR                 (one process, 4 devices, the whole batch)

Both modes run the same program on a (data 2, fsdp 2, tensor 1) mesh: the toy-vocabulary policy
of tests/rl/test_trainer.py initialised straight into its sharding, AdamW train state sharded as
the params, the jitted GRPO step with explicit state/reference/batch shardings (the TPU pod
path of experiments/train.py). In `pair` the mesh's "data" axis spans the two processes and each
process feeds only its own half of the prompts (`jax.make_array_from_process_local_data`, every
key, `image_grid_thw` too, and the host vision layouts planned from the whole step's grids); in
`single` one process feeds all of them. After two steps the state is saved with
`TrainCheckpoints` (both processes write into one directory), the manager is closed, a fresh
manager restores the newest step into the state's shardings, and one more step runs from the
restored state.

Writes WORKDIR/result.npz from process 0: the initial and final params (`init/<path>`,
`final/<path>`), each step's sampled tokens, lengths and rewards, and the largest difference
between the saved and the restored train state (`restore_diff`), the process count, and whether
any batch or state array was local to one process. Prints `DONE` at the end.
"""

import os
import sys

MODE = sys.argv[1] if len(sys.argv) > 1 else ""
# Backend optimisation level 0 halves the step's compile time on CPU; both modes use it, and the
# partitioned program (what this test is about) is the same at every level.
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={2 if MODE == 'pair' else 4} "
                           "--xla_backend_optimization_level=0")
os.environ["JAX_PLATFORMS"] = "cpu"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, dummy_inputs  # noqa: E402
from segzero_jax.parallel import (DEFAULT_RULES, initialize_distributed, make_mesh,  # noqa: E402
                                  named_sharding, sharded_init)
from segzero_jax.rl import trainer as T  # noqa: E402
from segzero_jax.train_checkpoints import TrainCheckpoints  # noqa: E402
from tests.rl.test_trainer import IMG, VE, VS, settings, small_config, toy_batch, toy_table  # noqa: E402

PROMPTS, SAMPLES, NEW_TOKENS = 4, 2, 6
SAVE_AFTER, STEPS = 2, 3
BATCH_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "bbox", "points")


def step_settings() -> T.GRPOSettings:
    """Two updates per step (so the behaviour pass runs), one micro-batch of 4 rows each, KL to
    the reference policy on."""
    return settings(group_size=SAMPLES, max_new_tokens=NEW_TOKENS, update_batch_size=2, micro_batch_size=4)


def optimizer():
    # eps = 1e-3 rather than 1e-8: on the first steps Adam divides each gradient by its own size,
    # so a gradient that is float noise on both sides would move its param by +-lr at random.
    return T.make_optimizer(1e-2, weight_decay=1e-2, eps=1e-3)


def local_rows(batch: dict, process: int, count: int) -> dict:
    """This process's share of a step's prompts: rows [process * B / count, ...) of each key
    (pixel_values by the prompt's patches)."""
    b = batch["input_ids"].shape[0]
    per = b // count
    out = {}
    for k in BATCH_KEYS:
        a = np.asarray(batch[k])
        rows = a.shape[0] // b
        out[k] = a[process * per * rows:(process + 1) * per * rows]
    return out


def global_batch(local: dict, mesh) -> dict:
    """Each process's local rows -> global arrays with rows over ("data", "fsdp")."""
    out = {}
    for k, a in local.items():
        shape = (a.shape[0] * jax.process_count(),) + a.shape[1:]
        sharding = named_sharding(("act_batch",) + (None,) * (a.ndim - 1), shape, mesh, DEFAULT_RULES)
        out[k] = jax.make_array_from_process_local_data(sharding, a, shape)
    return out


def gathered(tree):
    """The global values of a tree of (possibly not fully addressable) arrays, as numpy."""
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def flat(prefix: str, tree) -> dict:
    return {prefix + jax.tree_util.keystr(path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def run(workdir: str) -> None:
    if MODE == "pair":
        mesh = make_mesh((1, 2, 1), dcn_mesh_shape=(2, 1, 1))   # "data" across the processes
    else:
        mesh = make_mesh((2, 2, 1))
    me, count = jax.process_index(), jax.process_count()
    cfg, s, tx = small_config(), step_settings(), optimizer()

    init_inputs = dict(dummy_inputs(cfg), input_ids=jnp.asarray([[VS, IMG, VE, 13]], jnp.int32))
    boxed, _ = sharded_init(lambda r: Qwen2_5_VL(cfg).init(r, **init_inputs)["params"], mesh, DEFAULT_RULES,
                            jax.random.key(0))
    params = nn.unbox(boxed)
    param_shardings = jax.tree.map(lambda a: a.sharding, params)
    ref = jax.tree.map(jnp.copy, params)
    state_shardings = T.train_state_shardings(params, param_shardings, tx, mesh)
    state = jax.jit(lambda p: T.init_train_state(p, tx, jax.random.PRNGKey(7)),
                    out_shardings=state_shardings)(params)
    results = flat("init/", gathered(params))
    results["processes"] = np.asarray(count)

    batches = [local_rows(toy_batch(PROMPTS, seed=i), me, count) for i in range(STEPS)]
    # The host vision layouts are planned from the grids of the whole step (one fixed frame).
    grid = np.asarray(multihost_utils.process_allgather(batches[0]["image_grid_thw"], tiled=True))
    layouts = T.host_layouts(cfg, s, grid)
    first = global_batch(batches[0], mesh)
    # In `pair` every array of the step spans both processes' devices.
    results["batch_addressable"] = np.asarray(any(v.is_fully_addressable for v in first.values()))
    results["state_addressable"] = np.asarray(any(a.is_fully_addressable for a in jax.tree.leaves(state)))
    step_fn = T.make_train_step(cfg, s, tx, toy_table(), layouts, mesh=mesh, rules=DEFAULT_RULES,
                                state_shardings=state_shardings, ref_shardings=param_shardings,
                                batch_shardings={k: v.sharding for k, v in first.items()})

    def one_step(state, i):
        state, out = step_fn(state, ref, global_batch(batches[i], mesh))
        for k in ("tokens", "lengths", "rewards"):
            results[f"step{i + 1}/{k}"] = np.asarray(gathered(out[k]))
        return state

    for i in range(SAVE_AFTER):
        state = one_step(state, i)
    saved = gathered(state)
    checkpoints = TrainCheckpoints(workdir)
    checkpoints.save(SAVE_AFTER, state.params, state.replace(params=None))
    checkpoints.close()
    del state

    fresh = TrainCheckpoints(workdir)
    step = fresh.latest_step()
    abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), saved,
                            state_shardings)
    p, rest = fresh.restore(step, abstract.params, abstract.replace(params=None))[:2]
    fresh.close()
    state = rest.replace(params=p)
    results["restored_step"] = np.asarray(step)
    results["restored_state_step"] = np.asarray(int(state.step))
    results["restored_same_sharding"] = np.asarray(all(
        a.sharding == sh for a, sh in zip(jax.tree.leaves(state), jax.tree.leaves(state_shardings))))
    results["restore_diff"] = np.asarray(max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0
        for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(gathered(state)))))

    for i in range(SAVE_AFTER, STEPS):
        state = one_step(state, i)
    results.update(flat("final/", gathered(state.params)))
    results["final_step"] = np.asarray(int(state.step))
    if me == 0:
        np.savez(os.path.join(workdir, "result.npz"), **results)
    print("DONE", flush=True)


def main(argv: list[str]) -> None:
    if MODE == "pair":
        port, process_id, workdir = int(argv[2]), int(argv[3]), argv[4]
        initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=90)
        run(workdir)
        jax.distributed.shutdown()
    elif MODE == "single":
        run(argv[2])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
