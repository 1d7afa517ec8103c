"""vlmo-fast: a fast, faithful implementation of VLMo (Mixture-of-Modality-Experts vision-language model)."""

__version__ = "0.1.0"


def from_pretrained(name_or_path: str, **kwargs):
    """The core VLMo model of an official weight's name (downloaded into the cache on first use), an official
    checkpoint file or a vlmo-fast checkpoint directory; see vlmo_fast.pretrained.from_pretrained."""
    from vlmo_fast.pretrained import from_pretrained as load

    return load(name_or_path, **kwargs)
