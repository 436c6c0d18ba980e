"""OpenAI-compatible gateway in front of vLLM for reasoning ("thinking") models."""

__version__ = "0.1.0"
