"""thyme: a vision-language model that thinks with images, on your own machine."""

__version__ = "0.1.0"
