"""Hyperparameter search over a recipe's tune specs with keras-tuner (``tfopt tune``)."""
