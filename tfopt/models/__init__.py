"""Model configs (TF-free), the builder, and model statistics."""
