"""The released VLMo weights by name: registry, download cache, and `from_pretrained`."""
from .cache import Cache, DownloadError, OfflineError, cache_dir
from .model import from_pretrained
from .registry import PRETRAINED, PretrainedWeight, get_weight, register
from .resolve import cached_file, resolve_load_path

__all__ = ["Cache", "DownloadError", "OfflineError", "cache_dir", "from_pretrained", "PRETRAINED",
           "PretrainedWeight", "get_weight", "register", "cached_file", "resolve_load_path"]
