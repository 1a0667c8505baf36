"""Model surgery: architecture changes that return plain tf_keras models (no wrappers)."""
