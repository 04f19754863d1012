"""The NovaMLX gateway: HTTP APIs, the worker supervisor, middleware."""
__version__ = "0.1.0"
