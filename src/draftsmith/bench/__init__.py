"""A Spec-Bench-style harness: every method against plain decoding of the same target, same run."""
