"""Drop-in surface for users of the official VLMo code: `VLMo(config)` and `compat.objectives`; importing it
registers the official architecture names with timm where timm imports (compat.timm_models)."""
from .module import VLMo
from .timm_models import register_with_timm

TIMM_REGISTERED = register_with_timm()

__all__ = ["VLMo", "TIMM_REGISTERED"]
