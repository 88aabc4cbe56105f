"""Builds a dataset's ArrayRecord files.

    python -m data_pipelines.build --dataset=synthetic --data_dir=DIR [--image_size=112 --num_train=400]
    python -m data_pipelines.build --dataset=refcocog --source=parquet|coco --data_dir=DIR --manual_dir=MANUAL
    python -m data_pipelines.build --dataset=reasonseg --source=json|parquet --data_dir=DIR --manual_dir=MANUAL
"""

from absl import app, flags

from data_pipelines.input_pipeline import make_builder

_DATASET = flags.DEFINE_string("dataset", None, "synthetic, refcocog or reasonseg", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "where the built dataset goes", required=True)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "source files of refcocog / reasonseg")
_SOURCE = flags.DEFINE_string("source", None, "refcocog: parquet|coco; reasonseg: json|parquet")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 112, "synthetic: image side in pixels")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 400, "synthetic: train examples")
_NUM_VAL = flags.DEFINE_integer("num_validation", 100, "synthetic: validation examples")
_NUM_TEST = flags.DEFINE_integer("num_test", 100, "synthetic: test examples")
_SEED = flags.DEFINE_integer("seed", 0, "synthetic: seed")


def main(argv):
    del argv
    from tensorflow_datasets.core import download

    if _DATASET.value == "synthetic":
        config = dict(image_size=_IMAGE_SIZE.value, num_train=_NUM_TRAIN.value,
                      num_validation=_NUM_VAL.value, num_test=_NUM_TEST.value, seed=_SEED.value)
    else:
        config = {"source": _SOURCE.value} if _SOURCE.value else {}
    builder = make_builder(_DATASET.value, _DATA_DIR.value, config)
    builder.download_and_prepare(download_config=download.DownloadConfig(manual_dir=_MANUAL_DIR.value))
    for split, info in builder.info.splits.items():
        print(f"{_DATASET.value} {split}: {info.num_examples} examples in {builder.data_dir}")


if __name__ == "__main__":
    app.run(main)
