"""Training runs: compile from the recipe, fit, checkpoint, resume and write the run directory."""
