"""Batch image decoding with NVIDIA DALI: decode + resize (+ the training augmentation), on the GPU or the CPU.

Datasets built with decode="dali" leave images encoded (`image_bytes`, ...); `DaliDecoder.apply(batch)` turns
them into the official `image` lists of (B, 3, S, S) float tensors in [-1, 1].  On CUDA the 'mixed' decoder
(nvJPEG) decodes on the GPU; on the CPU the 'cpu' decoder is used (tests and benchmarks).

Validation is the PIL path's transform: bicubic resize to S x S (both antialias when shrinking), to [-1, 1].
Training differs from the PIL path (transforms.py) in what DALI offers:
- RandomResizedCrop: fn.random_resized_crop, same area (0.5, 1) and ratio (3/4, 4/3), cubic; DALI's own sampler.
- horizontal flip: coin flip, p = 0.5.
- RandomAugment: DALI's rand_augment with the ten official ops (identity, auto_contrast, equalize, brightness,
  sharpness, shear_x/y, translate_x/y in pixels, rotate) at the official magnitudes (factor 1.36 brightening
  only, shear 0.21, 7 px, 21 degrees, fill 128).  The official applies each of its 2 draws with probability 0.5;
  DALI always applies its draws, so identity is listed 11 times among 20 entries (P(identity) = 0.55, each other
  op 0.05 per draw: the official distribution).  DALI's sharpness kernel and warp interpolation differ slightly
  from cv2's, so augmented pixels are not bit-identical to the PIL path.
- randomness: DALI's per-pipeline seed, not the per-sample seeds of the PIL path (reproducible for a seed and a
  batch order, not per sample).
"""
from __future__ import annotations

import queue
import threading
import warnings

import torch

_INSTALL_HINT = ("NVIDIA DALI is not installed: `pip install nvidia-dali-cuda120` (or nvidia-dali-cuda130 for "
                 "CUDA 13; the PyPI package 'nvidia-dali' is an empty placeholder), or use the PIL decoder")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def _import_dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return dali, fn, types


def pick_decoder(device: torch.device | str, requested: str = "auto") -> str:
    """"dali" or "pil": auto picks DALI on CUDA when installed and PIL on the CPU; "dali" without DALI raises.

    Example: pick_decoder("cuda", "auto") -> "dali" (if installed)
    """
    if requested not in ("auto", "dali", "pil"):
        raise ValueError(f"image decoder must be auto, dali or pil, got {requested!r}")
    if requested == "pil":
        return "pil"
    if requested == "dali":
        _import_dali()
        return "dali"
    return "dali" if torch.device(device).type == "cuda" and dali_available() else "pil"


def _rand_augment_ops():
    from nvidia.dali.auto_aug import augmentations as a

    # Magnitude bins 0..10 with m = 7 give 0.7 x the upper bound: bounds chosen so that the result is the official
    # value (e.g. brightness 0.36 / 0.7 -> factor 1 + 0.36).
    enhance = dict(mag_range=(0, 0.36 / 0.7), randomly_negate=False)
    ops = [a.auto_contrast, a.equalize, a.brightness.augmentation(**enhance),
           a.sharpness.augmentation(**enhance), a.shear_x.augmentation(mag_range=(0, 0.3)),
           a.shear_y.augmentation(mag_range=(0, 0.3)),
           a.translate_x_no_shape.augmentation(mag_range=(0, 10)),
           a.translate_y_no_shape.augmentation(mag_range=(0, 10)), a.rotate.augmentation(mag_range=(0, 30))]
    identities = [a.identity.augmentation(name=f"identity_{k}") for k in range(11)]
    return identities + ops


class DaliDecoder:
    """Decode lists of encoded images to (B, 3, S, S) float tensors in [-1, 1] with a DALI pipeline.

    Example: DaliDecoder(224, train=True, device="cpu")([jpeg_bytes, ...]).shape -> (B, 3, 224, 224)
    """

    def __init__(self, image_size: int, *, train: bool, device: torch.device | str = "cuda", batch_size: int = 256,
                 randaug: bool = True, num_threads: int = 2, seed: int = 0, prefetch: int = 2):
        _, fn, types = _import_dali()
        self.device = torch.device(device)
        self.image_size, self.batch_size, self.prefetch = image_size, batch_size, max(1, prefetch)
        gpu = self.device.type == "cuda"
        device_id = (self.device.index or 0) if gpu else None
        from nvidia.dali import pipeline_def

        # rand_augment picks ops with `if` on data nodes: that needs pipeline_def's conditionals.
        @pipeline_def(enable_conditionals=True)
        def graph():
            encoded = fn.external_source(name="encoded", device="cpu", dtype=types.UINT8)
            images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
            if train:
                images = fn.random_resized_crop(images, size=(image_size, image_size), random_area=(0.5, 1.0),
                                                random_aspect_ratio=(3 / 4, 4 / 3), interp_type=types.INTERP_CUBIC)
                images = fn.flip(images, horizontal=fn.random.coin_flip(probability=0.5))
                if randaug:
                    from nvidia.dali.auto_aug import rand_augment
                    images = rand_augment.apply_rand_augment(_rand_augment_ops(), images, n=2, m=7,
                                                             num_magnitude_bins=11)
            else:
                images = fn.resize(images, resize_x=image_size, resize_y=image_size, interp_type=types.INTERP_CUBIC,
                                   antialias=True)
            return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * 3,
                                            std=[127.5] * 3)

        with warnings.catch_warnings():
            # DALI's own auto_aug still calls its deprecated fn.experimental aliases; not ours to fix.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            pipe = graph(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                         prefetch_queue_depth=1)
            pipe.build()
        self.pipe = pipe

    def __call__(self, encoded: list[bytes]) -> torch.Tensor:
        import numpy as np

        if not 0 < len(encoded) <= self.batch_size:
            raise ValueError(f"DALI decoder: batch of {len(encoded)} images, expected 1..{self.batch_size}")
        arrays = [np.frombuffer(b, dtype=np.uint8) for b in encoded]
        self.pipe.feed_input("encoded", arrays)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # DALI's deprecated aliases, as above
            (out,) = self.pipe.run()
        if self.device.type == "cuda":
            return torch.from_dlpack(out.as_tensor()).clone()  # clone: DALI reuses its output buffer
        return torch.from_numpy(np.array(out.as_tensor()))

    def apply(self, batch: dict) -> dict:
        """Replace `image_bytes` (`image_0_bytes`, ...) in a collated batch by decoded `image` lists, in place."""
        for key in _encoded_keys(batch):
            batch[key[: -len("_bytes")]] = [self(batch.pop(key))]
        return batch

    def decode_ahead(self, batches):
        """Yield the collated batches with their images decoded, in order, while a thread keeps up to `prefetch`
        batches decoded ahead (DALI works outside the GIL, so decoding overlaps the consumer's step)."""
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            try:
                for batch in batches:
                    if not put(self.apply(batch)):
                        return
                put(done)
            except BaseException as e:  # handed to the consumer, raised there
                put(e)

        thread = threading.Thread(target=work, name="dali-decode-ahead", daemon=True)
        thread.start()
        try:
            while (item := ready.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()


def _encoded_keys(batch: dict) -> list[str]:
    return [k for k in batch if k.startswith("image") and k.endswith("_bytes")]
