"""chatforge: a declarative data-and-model build system for training your own chatbot."""

__version__ = "0.1.0"
