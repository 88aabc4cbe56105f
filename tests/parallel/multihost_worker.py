"""One process of the two-process CPU test. Joins the cluster and builds a (data 2, fsdp 2,
tensor 2) mesh whose "data" axis spans the two hosts, then checks what a multi-host GRPO run
rests on:

  * a cross-host reduction of a batch assembled from each process's local rows;
  * the tiny policy initialised straight into its global sharding;
  * the response log-probs and their gradient (the update's work) on a global batch whose
    rows come from both processes, against the same computation on one local device;
  * an Orbax save by both processes into one directory and a restore into the sharding;
  * SAM2 (the evaluator's segmentation step) on images fed by both processes, params placed by
    their logical axes, against one device segmenting them all;
  * the input pipeline on the default synthetic data in one shared `data_dir`, built on first
    use once (two processes building it at once fail, depending on timing, when the second
    renames its copy into place), each process's batch equal to the pipeline told its process
    index by hand, the two halves disjoint and assembled into one global batch; then with a
    `data_dir` of each process's own, named differently (hosts with their own disks): process 0
    builds first, the other builds its own copy after it, and both copies feed the same rows.

Prints one `RESULT {json}` line with the differences; the test asserts on them.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from segzero_jax import checkpoint  # noqa: E402
from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, dummy_inputs, preset  # noqa: E402
from segzero_jax.parallel import (DEFAULT_RULES, initialize_distributed, make_mesh,  # noqa: E402
                                  named_sharding, sharded_init)

ROWS, T, R = 4, 24, 8   # global rows (2 per process), tokens per row, response tokens scored


def _max_diff(a, b) -> float:
    return float(max(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))
                     for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def _fed_by_both(full: np.ndarray, mesh) -> jax.Array:
    """The global array `full` (the same on every process) assembled from each process feeding
    only its own half of the rows, sharded over "act_batch"."""
    me, half = jax.process_index(), full.shape[0] // 2
    spec = named_sharding(("act_batch",) + (None,) * (full.ndim - 1), full.shape, mesh, DEFAULT_RULES)
    return jax.make_array_from_process_local_data(spec, full[me * half:(me + 1) * half], full.shape)


def _sam2(mesh) -> dict:
    from segzero_jax.models.sam2 import get_preset, low_res_masks, random_params
    from segzero_jax.models.sam2.convert import param_shardings

    cfg = get_preset("test_tiny")
    params = random_params(cfg, jax.random.PRNGKey(3))        # same on both processes
    s = cfg.image_size
    rs = np.random.RandomState(5)
    images = rs.randn(4, s, s, 3).astype(np.float32)
    boxes = np.array([[10, 12, 90, 100], [5, 5, 60, 40], [30, 20, 120, 110], [0, 40, 64, 127]], np.float32)
    points, labels = rs.uniform(0, s, (4, 2, 2)).astype(np.float32), np.ones((4, 2), np.int32)
    sharded = jax.device_put(params, param_shardings(cfg, mesh))
    segment = jax.jit(lambda *a: low_res_masks(*a, config=cfg))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        low, scores = segment(sharded, *(_fed_by_both(a, mesh) for a in (images, boxes, points, labels)))
    ref_low, ref_scores = segment(params, images, boxes, points, labels)
    return {"sam2_logit_diff": _max_diff(multihost_utils.process_allgather(low, tiled=True), ref_low),
            "sam2_score_diff": _max_diff(multihost_utils.process_allgather(scores, tiled=True), ref_scores)}


def _input_pipeline(mesh, workdir: str) -> dict:
    import zlib

    from data_pipelines import input_pipeline as IP
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

    me, tok = jax.process_index(), QwenTokenizer.default()
    config = dict(dataset="synthetic", split="train", data_dir=os.path.join(workdir, "tfds"), batch_size=4,
                  builder_config=dict(image_size=64, num_train=16, num_validation=4, num_test=4, seed=3),
                  max_prompt_length=200, image_size=56, seed=0, num_epochs=1)
    batch = next(iter(IP.make_input_pipeline(config, tokenizer=tok)))      # builds the data on first use
    by_hand = next(iter(IP.make_input_pipeline(dict(config, process_index=me, process_count=2,
                                                    build_if_missing=False), tokenizer=tok)))
    ids = jax.make_array_from_process_local_data(
        named_sharding(("act_batch", "act_length"), (4, 200), mesh), batch["input_ids"])
    full = np.asarray(multihost_utils.process_allgather(ids, tiled=True))
    image_ids = np.array([zlib.crc32(str(x).encode()) for x in batch["image_id"]], np.int64)
    all_ids = np.asarray(multihost_utils.process_allgather(image_ids)).reshape(-1)
    own_dir = os.path.join(workdir, f"tfds_host{me}")
    own = next(iter(IP.make_input_pipeline(dict(config, data_dir=own_dir), tokenizer=tok)))
    return {"data_own_disk_built": os.path.isdir(os.path.join(own_dir, "segzero_synthetic")),
            "data_own_disk_same": all(np.array_equal(batch[k], own[k])
                                      for k in ("input_ids", "attention_mask", "pixel_values")),
            "data_local_rows": int(batch["input_ids"].shape[0]),
            "data_same_as_by_hand": all(np.array_equal(batch[k], by_hand[k])
                                        for k in ("input_ids", "attention_mask", "pixel_values")),
            "data_global_shape": list(full.shape),
            "data_own_rows_in_place": bool(np.array_equal(full[2 * me:2 * me + 2], batch["input_ids"])),
            "data_distinct_images": int(len(set(all_ids.tolist())))}


def main(port: int, process_id: int, workdir: str) -> None:
    initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=90)
    mesh = make_mesh((1, 2, 2), dcn_mesh_shape=(2, 1, 1))
    me = jax.process_index()
    result = {"process": me, "devices": jax.device_count(),
              "row_processes": sorted({d.process_index for d in mesh.devices[me].flat})}

    # Each process owns one "data" row of the mesh: its local batch rows.
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    local = np.arange(4, dtype=np.float32) + 4 * me
    global_x = jax.make_array_from_process_local_data(sharding, local, (8,))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(global_x)
    result["total"] = float(total)

    cfg = preset("tiny")
    model = Qwen2_5_VL(cfg)
    boxed, shardings = sharded_init(lambda rng: model.init(rng, **dummy_inputs(cfg))["params"],
                                    mesh, DEFAULT_RULES, jax.random.key(0))
    params = nn.unbox(boxed)
    shardings = nn.unbox(shardings)
    result["param_fully_addressable"] = all(p.is_fully_addressable for p in jax.tree.leaves(params))

    # Every process draws the same global batch and feeds only its own rows.
    rs = np.random.RandomState(7)
    ids = rs.randint(0, 150000, (ROWS, T)).astype(np.int32)
    mask = np.ones((ROWS, T), np.int32)
    mask[1, :5] = 0           # a left-padded prompt on process 0
    mask[2, :3] = 0           # and one on process 1
    batch = named_sharding(("act_batch", "act_length"), (ROWS, T), mesh, DEFAULT_RULES)
    g_ids, g_mask = (_fed_by_both(a, mesh) for a in (ids, mask))

    def loss(p, i, m):
        lp, _ = model.apply({"params": p}, i, attention_mask=m, num_targets=R, chunk_size=4,
                            method=Qwen2_5_VL.response_log_probs)
        return jnp.mean(lp), lp

    step = jax.value_and_grad(loss, has_aux=True)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        (value, lp), grads = jax.jit(step, out_shardings=(
            (NamedSharding(mesh, PartitionSpec()), batch), shardings))(params, g_ids, g_mask)
    host_params = multihost_utils.process_allgather(params, tiled=True)
    (ref_value, ref_lp), ref_grads = jax.jit(step)(host_params, ids, mask)
    result["loss_diff"] = abs(float(value) - float(ref_value))
    result["logprob_diff"] = _max_diff(multihost_utils.process_allgather(lp, tiled=True), ref_lp)
    result["grad_diff"] = _max_diff(multihost_utils.process_allgather(grads, tiled=True), ref_grads)
    result["grad_scale"] = _max_diff(ref_grads, jax.tree.map(jnp.zeros_like, ref_grads))

    path = os.path.join(workdir, "params")
    checkpoint.save_params(path, params)
    restored = checkpoint.restore_params(path, shardings)
    result["restored_same_sharding"] = all(
        r.sharding == p.sharding for r, p in zip(jax.tree.leaves(restored), jax.tree.leaves(params)))
    result["restore_diff"] = _max_diff(multihost_utils.process_allgather(restored, tiled=True), host_params)

    result.update(_sam2(mesh))
    result.update(_input_pipeline(mesh, workdir))
    print("RESULT " + json.dumps(result), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
