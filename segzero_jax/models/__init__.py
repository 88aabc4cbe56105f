"""Model ports: the Qwen2.5-VL policy and the SAM2 segmenter (pure-functional Flax linen)."""
