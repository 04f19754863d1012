"""The only code both processes import: message types, the line codec, and model naming
(what a model on disk is called and what kind it is)."""
from .messages import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
