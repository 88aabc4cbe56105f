"""TFDS builder of the synthetic reasoning-segmentation set (the embedded default, no download).

    builder = SegzeroSynthetic(data_dir=DIR)            # 112 px, 400 / 100 / 100 examples
    builder = SegzeroSynthetic(data_dir=DIR, config=synthetic_config(image_size=224, num_train=2000))
    builder.download_and_prepare()                      # seconds; writes ArrayRecord files
    source = builder.as_data_source("train")            # random access, no TensorFlow needed

Scenes and questions: see ``data_pipelines.synthetic_scenes``.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from data_pipelines import common
from data_pipelines.synthetic_scenes import generate_example


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    image_size: int = 112
    num_train: int = 400
    num_validation: int = 100
    num_test: int = 100
    seed: int = 0


def synthetic_config(image_size: int = 112, num_train: int = 400, num_validation: int = 100,
                     num_test: int = 100, seed: int = 0) -> SyntheticConfig:
    """A config whose name encodes its parameters (each gets its own directory under data_dir)."""
    for field, value in (("image_size", image_size), ("num_train", num_train),
                         ("num_validation", num_validation), ("num_test", num_test)):
        if int(value) <= 0:
            raise ValueError(f"synthetic config: {field} must be positive, got {value}")
    if image_size < 48:
        raise ValueError(f"synthetic config: image_size must be at least 48, got {image_size}")
    name = f"s{image_size}_n{num_train}-{num_validation}-{num_test}_seed{seed}"
    return SyntheticConfig(name=name, image_size=int(image_size), num_train=int(num_train),
                           num_validation=int(num_validation), num_test=int(num_test), seed=int(seed))


class SegzeroSynthetic(tfds.core.GeneratorBasedBuilder):
    """Shapes with colours, sizes and positions; a question that needs a little reasoning."""

    name = "segzero_synthetic"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [synthetic_config()]

    def __init__(self, *, file_format: str = "array_record", config=None, **kwargs):
        # An equal config built again stands for the registered one of the same name.
        registered = {c.name: c for c in self.BUILDER_CONFIGS}
        if isinstance(config, SyntheticConfig) and registered.get(config.name) == config:
            config = registered[config.name]
        super().__init__(file_format=file_format, config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic reasoning segmentation scenes (held-out colour-shape pairs in val/test).",
            features=common.core_features(
                mask=common.mask_feature(),
                question_type=tfds.features.Text(),
                target=tfds.features.Text(),
            ),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
            "test": self._generate_examples("test", cfg.num_test),
        }

    def _generate_examples(self, split: str, count: int):
        cfg = self.builder_config
        for index in range(count):
            example = generate_example(cfg.seed, split, index, cfg.image_size)
            yield example["image_id"], example
