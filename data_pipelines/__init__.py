"""Data: TFDS builders (synthetic, refcocog, reasonseg; ArrayRecord files, no TensorFlow needed),
the grain input pipeline (`data_pipelines.input_pipeline.make_input_pipeline`) and the build
command (`python -m data_pipelines.build`)."""
