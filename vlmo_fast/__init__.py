"""vlmo-fast: a fast, faithful implementation of VLMo (Mixture-of-Modality-Experts vision-language model)."""

__version__ = "0.1.0"
