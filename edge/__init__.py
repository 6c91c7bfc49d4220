"""llama-edge runtime: torch-free tokenizer, chat formats, sampling, generation and tasks."""

__version__ = "0.1.0"
