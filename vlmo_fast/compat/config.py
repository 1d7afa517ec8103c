"""The official config dict and its mapping onto ModelConfig (defined in vlmo_fast.official_config; here for the
users of the official surface)."""
from vlmo_fast.official_config import ARCH_KEYS, OFFICIAL_DEFAULTS, full_config, model_config

__all__ = ["ARCH_KEYS", "OFFICIAL_DEFAULTS", "full_config", "model_config"]
