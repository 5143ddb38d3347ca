"""The Ray Tune search: spec (YAML → Tune objects), trainable (one trial), runner (Tuner, resume)."""
