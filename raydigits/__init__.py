"""raydigits: a Ray Tune hyperparameter search for torchvision image classifiers."""

__version__ = "0.1.0"
