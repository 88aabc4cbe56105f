"""Times Seg-Zero's reward on the host (decode + Python) against the on-device reward.

  python -m experiments.perf.benchmark_rewards [--num_responses=1024] [--tokens=300]

Builds responses of about `--tokens` Qwen2.5 tokens (reasoning text plus an answer, with
good, wrong and malformed answers mixed), then times
  host:   tokenizer.decode(ids, skip_special_tokens=True) + reward_host.host_reward, per response
          (the reference pipeline; the Python reward alone is reported too)
  device: jitted device_rewards on the [N, T] id batch (compile excluded, block_until_ready)
and prints a table and one JSON line.
"""

from __future__ import annotations

import json
import random
import time

import numpy as np
from absl import app, flags

from experiments.perf.report import emit

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_responses", 1024, "Responses per timing.")
flags.DEFINE_integer("tokens", 300, "Approximate tokens per response.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (the best is reported).")
flags.DEFINE_string("reward", "seg_strict", "Reward scheme.")

WORDS = ("the a dog cat left right person standing near table red blue small large object "
         "between behind front image region compare closest matches question shirt "
         "holding wearing 左边 的 狗 😀").split()


def make_responses(n: int, tokens: int, seed: int = 0) -> list[tuple[str, list, list]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x1, y1 = rng.randint(0, 600), rng.randint(0, 600)
        box = [x1, y1, x1 + rng.randint(20, 200), y1 + rng.randint(20, 200)]
        pts = [[rng.randint(box[0], box[2]), rng.randint(box[1], box[3])] for _ in range(2)]
        jitter = [c + rng.randint(-12, 12) for c in box]
        answer = json.dumps({"bbox": jitter, "points_1": pts[0], "points_2": pts[1]})
        thought = " ".join(rng.choice(WORDS) for _ in range(int(tokens * 0.8)))
        text = f"<think>{thought}</think>\n<answer>{answer}</answer>"
        if i % 7 == 3:
            text = text.replace('"', "'")
        if i % 11 == 5:
            text = text[: len(text) * 2 // 3]
        out.append((text, box, pts))
    return out


def run(num_responses: int, tokens: int, repeats: int, scheme: str) -> dict:
    import jax

    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer
    from segzero_jax.rl.byte_table import byte_table_for_tokenizer
    from segzero_jax.rl.reward_device import device_rewards
    from segzero_jax.rl.reward_host import host_reward

    tok = QwenTokenizer.default()
    cases = make_responses(num_responses, tokens)
    encoded = [tok.encode(c[0]) for c in cases]
    t = -(-max(len(e) for e in encoded) // 32) * 32
    ids = np.full((num_responses, t), tok.pad_id, np.int32)
    lens = np.array([len(e) for e in encoded], np.int32)
    for i, e in enumerate(encoded):
        ids[i, :len(e)] = e
    gb = np.array([c[1] for c in cases], np.float32)
    gp = np.array([c[2] for c in cases], np.float32)
    solutions = [{"bbox": c[1], "points": c[2]} for c in cases]

    def host_once():
        texts = [tok.decode(ids[i, :lens[i]], skip_special_tokens=True)
                 for i in range(num_responses)]
        return [host_reward(x, s, scheme)["total"] for x, s in zip(texts, solutions)]

    table = byte_table_for_tokenizer(tok)
    fn = jax.jit(lambda *a: device_rewards(*a, table, scheme)["total"])
    args = [jax.device_put(x) for x in (ids, lens, gb, gp)]
    t0 = time.perf_counter()
    dev_totals = np.asarray(jax.block_until_ready(fn(*args)))
    compile_s = time.perf_counter() - t0

    texts = [tok.decode(ids[i, :lens[i]], skip_special_tokens=True) for i in range(num_responses)]
    host_s, dev_s, score_s = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, s in zip(texts, solutions):
            host_reward(x, s, scheme)
        score_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        host_totals = host_once()
        host_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        dev_s.append(time.perf_counter() - t0)
    agree = float(np.mean(np.abs(np.asarray(host_totals) - dev_totals) < 1e-4))
    return {"responses": num_responses, "mean_tokens": float(lens.mean()), "padded_tokens": t,
            "backend": jax.default_backend(), "host_s": min(host_s), "device_s": min(dev_s),
            "host_responses_per_s": num_responses / min(host_s),
            "device_responses_per_s": num_responses / min(dev_s),
            "device_over_host": min(host_s) / min(dev_s), "compile_s": compile_s,
            "host_python_reward_only_s": min(score_s),
            "agreement": agree}


def main(argv):
    del argv
    r = run(FLAGS.num_responses, FLAGS.tokens, FLAGS.repeats, FLAGS.reward)
    print(f"{'path':<8}{'seconds':>10}{'responses/s':>14}")
    print(f"{'host':<8}{r['host_s']:>10.4f}{r['host_responses_per_s']:>14.0f}")
    print(f"{'device':<8}{r['device_s']:>10.4f}{r['device_responses_per_s']:>14.0f}")
    print(f"(host time without decoding: {r['host_python_reward_only_s']:.4f}s)")
    print(f"device/host speed ratio {r['device_over_host']:.2f}, backend {r['backend']}, "
          f"{r['responses']} responses x {r['mean_tokens']:.0f} tokens (padded to "
          f"{r['padded_tokens']}), compile {r['compile_s']:.1f}s, agreement {r['agreement']:.3f}")
    emit(r)


if __name__ == "__main__":
    app.run(main)
