"""The only code both processes import: message types and the line codec."""
from .messages import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
