"""ftray: LLM fine-tuning from examples to a watched, served model, on Ray."""

__version__ = "0.1.0"
