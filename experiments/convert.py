r"""Converts published weights to Orbax model directories, and a policy back to HF safetensors.

Import (HF Qwen2.5-VL safetensors + Meta's SAM2 checkpoint -> Orbax):

  python -m experiments.convert --qwen_hf_dir=Qwen2.5-VL-7B-Instruct \
      --sam2_checkpoint=sam2_hiera_large.pt --out=ckpt/seg_zero_init

writes `OUT/policy/` (config.json, params/, tokenizer/ with the HF tokenizer files) and
`OUT/sam2/` (config.json, params/). Either source may be given alone.

Export (a policy model directory -> safetensors + config.json that transformers loads):

  python -m experiments.convert --checkpoint=ckpt/seg_zero_init --export_hf=hf_out
"""

from __future__ import annotations

import os
import shutil

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("qwen_hf_dir", None, "HF Qwen2.5-VL directory (config.json + safetensors).")
flags.DEFINE_string("sam2_checkpoint", None, "Meta's sam2_hiera_*.pt (a {'model': state_dict}).")
flags.DEFINE_string("sam2_preset", None, "SAM2 preset name; default: inferred from the checkpoint.")
flags.DEFINE_bool("sam2_scan_blocks", True, "SAM2 params with runs of Hiera blocks stacked for nn.scan; "
                  "--nosam2_scan_blocks: one module per block, the inference layout on a GPU")
flags.DEFINE_string("out", None, "Output directory for the Orbax model directories.")
flags.DEFINE_enum("param_dtype", "bfloat16", ["float32", "bfloat16"], "Stored dtype of the policy.")
flags.DEFINE_string("checkpoint", None, "With --export_hf: a convert output, a policy directory or a "
                    "training workdir (experiments.train).")
flags.DEFINE_string("export_hf", None, "Directory for the exported HF safetensors policy.")
flags.DEFINE_string("step", "newest", "With --export_hf from a training workdir: newest, best or a step number.")

POLICY_DIR, SAM2_DIR, TOKENIZER_DIR = "policy", "sam2", "tokenizer"
# HF files that describe tokenisation and generation; the weights and config.json are ours.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "preprocessor_config.json", "generation_config.json")


def copy_tokenizer_files(src: str, dst: str) -> list[str]:
    """Copies the tokenizer/generation files present in `src` to `dst`; returns their names."""
    found = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    if found:
        os.makedirs(dst, exist_ok=True)
    for name in found:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    return found


def import_qwen(hf_dir: str, out: str, param_dtype: str) -> None:
    from segzero_jax import checkpoint
    from segzero_jax.models.qwen2_5_vl import load_hf
    config, params = load_hf(hf_dir, param_dtype=param_dtype)
    target = os.path.join(out, POLICY_DIR)
    checkpoint.save_model(target, checkpoint.POLICY_KIND, config, params)
    copied = copy_tokenizer_files(hf_dir, os.path.join(target, TOKENIZER_DIR))
    logging.info("policy -> %s (tokenizer files: %s)", target, ", ".join(copied) or "none")


def import_sam2(path: str, out: str, preset: str | None, scan_blocks: bool = True) -> None:
    from segzero_jax import checkpoint
    from segzero_jax.models.sam2 import load_checkpoint
    config, params = load_checkpoint(path, preset, scan_blocks=scan_blocks)
    target = os.path.join(out, SAM2_DIR)
    checkpoint.save_model(target, checkpoint.SAM2_KIND, config, params)
    logging.info("sam2 -> %s", target)


def policy_directory(path: str) -> str:
    """`path` itself if it is a policy model directory, else its `policy/` child."""
    nested = os.path.join(path, POLICY_DIR)
    return nested if os.path.isdir(nested) else path


def export_policy(checkpoint_dir: str, out: str, step: str = "newest") -> list[str]:
    """HF safetensors of a convert output, a policy model directory, or a training workdir's
    newest / best / numbered step."""
    from segzero_jax import checkpoint, train_checkpoints
    from segzero_jax.models.qwen2_5_vl import export_hf
    if train_checkpoints.is_training_workdir(checkpoint_dir):
        config, params = train_checkpoints.restore_trained_policy(
            checkpoint_dir, step if step in ("newest", "best") else int(step))
        import json
        run = os.path.join(checkpoint_dir, "run_config.json")
        source = ""
        if os.path.isfile(run):
            with open(run) as f:
                source = json.load(f).get("model", {}).get("policy_checkpoint", "")
        files = export_hf(config, params, out)
        if source:
            copy_tokenizer_files(os.path.join(source, TOKENIZER_DIR), out)
        return files
    source = policy_directory(checkpoint_dir)
    config, params = checkpoint.restore_policy(source)
    files = export_hf(config, params, out)
    copy_tokenizer_files(os.path.join(source, TOKENIZER_DIR), out)
    return files


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.export_hf:
        if not FLAGS.checkpoint:
            raise app.UsageError("--export_hf needs --checkpoint (the policy to export)")
        if not os.path.isdir(FLAGS.checkpoint):
            raise app.UsageError(f"--checkpoint={FLAGS.checkpoint} does not exist")
        files = export_policy(FLAGS.checkpoint, FLAGS.export_hf, FLAGS.step)
        logging.info("exported %d file(s) to %s", len(files), FLAGS.export_hf)
        return
    if not FLAGS.out or not (FLAGS.qwen_hf_dir or FLAGS.sam2_checkpoint):
        raise app.UsageError("give --out and at least one of --qwen_hf_dir, --sam2_checkpoint "
                             "(or --checkpoint with --export_hf)")
    for flag in ("qwen_hf_dir", "sam2_checkpoint"):
        value = getattr(FLAGS, flag)
        if value and not os.path.exists(value):
            raise app.UsageError(f"--{flag}={value} does not exist")
    if FLAGS.qwen_hf_dir:
        import_qwen(FLAGS.qwen_hf_dir, FLAGS.out, FLAGS.param_dtype)
    if FLAGS.sam2_checkpoint:
        import_sam2(FLAGS.sam2_checkpoint, FLAGS.out, FLAGS.sam2_preset, FLAGS.sam2_scan_blocks)


if __name__ == "__main__":
    app.run(main)
