"""Drop-in surface for users of the official VLMo code: `VLMo(config)` and `compat.objectives`."""
from .module import VLMo

__all__ = ["VLMo"]
