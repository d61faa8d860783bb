"""The open_clip encoder: image and text towers of one CLIP model, loaded once per process."""

import functools
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from mushroom_pipeline.retries import UnavailableError

RANDOM = "random"


class ModelUnavailableError(UnavailableError):
    """The configured CLIP model or weights cannot be loaded; the message names the variable."""


@dataclass
class ClipEncoder:
    model: object  # open_clip.CLIP
    preprocess: object  # torchvision transform: PIL image → normalized tensor
    tokenizer: object
    device: str
    model_id: str  # what mushroom.image_embeddings.model holds: architecture/weights
    dim: int
    random_weights: bool
    image_size: int

    def encode_images(self, batch) -> np.ndarray:
        """A stacked batch of preprocessed images → L2-normalized float32 vectors."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.device), normalize=True)
        return features.float().cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(texts).to(self.device)
            features = _encode_text_trimmed(self.model, tokens)
        return features.float().cpu().numpy()


def _encode_text_trimmed(model, tokens):
    """CLIP.encode_text over the batch's used positions only, not all 77.

    The text tower's attention is causal and its output is read at the end-of-text token, so the
    padding after the longest text never affects the result; dropping it makes the short context
    sentences about 2-3× cheaper. Other text towers (CustomTextCLIP) run as open_clip has them.
    """
    import torch.nn.functional as F

    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if not all(hasattr(model, name) for name in needed) or model.text_pool_type != "argmax":
        return model.encode_text(tokens, normalize=True)
    end = tokens.argmax(dim=-1)  # the end-of-text token has the highest id: as open_clip pools
    used = int(end.max()) + 1
    tokens = tokens[:, :used]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:used].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:used, :used]))
    x = x[range(x.shape[0]), end]
    if model.text_projection is not None:
        x = model.text_projection(x) if callable(model.text_projection) else x @ model.text_projection
    return F.normalize(x, dim=-1)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def model_identity(architecture: str, pretrained: str) -> tuple[str, str]:
    """(architecture name, weights id) as stored in the `model` column, without loading weights:
    a checkpoint file is known by its name and content hash, so a new file is a new model."""
    if architecture.endswith(".json"):
        architecture = Path(architecture).stem
    if pretrained != RANDOM and Path(pretrained).is_file():
        return architecture, f"file:{Path(pretrained).name}@{_file_digest(Path(pretrained))}"
    return architecture, pretrained


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def load_encoder(architecture: str, pretrained: str, device: str) -> ClipEncoder:
    """Loads the model once per process (sensor runs and in-process demo days share it)."""
    import open_clip
    import torch

    config_file = Path(architecture)
    if architecture.endswith(".json"):
        # A model config file of one's own (as open_clip's model_configs/*.json): its stem names it.
        if not config_file.is_file():
            raise ModelUnavailableError(f"MUSHROOM_CLIP_MODEL={architecture!r}: no such config file")
        open_clip.add_model_config(config_file)
        architecture = config_file.stem
    if open_clip.get_model_config(architecture) is None:
        raise ModelUnavailableError(
            f"MUSHROOM_CLIP_MODEL={architecture!r} is not an open_clip architecture "
            f"(e.g. ViT-B-32; known: {len(open_clip.list_models())}) nor a model config .json file"
        )
    random_weights = pretrained == RANDOM
    _, weights_id = model_identity(architecture, pretrained)
    weights = None if random_weights else pretrained
    if random_weights:
        torch.manual_seed(0)  # the same untrained weights in every process: stable demo vectors
    try:
        with _LOAD_LOCK:
            model, _, preprocess = open_clip.create_model_and_transforms(
                architecture, pretrained=weights, device=device
            )
    except Exception as err:  # unknown tag, no network for the download, corrupt checkpoint
        raise ModelUnavailableError(
            f"Cannot load CLIP weights {pretrained!r} for {architecture}: {type(err).__name__}: "
            f"{err}. Set MUSHROOM_CLIP_PRETRAINED to a checkpoint file, or to 'random' for "
            "untrained weights (flagged in the metadata)."
        ) from None
    model.eval()
    return ClipEncoder(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(architecture),
        device=device,
        model_id=f"{architecture}/{weights_id}",
        dim=int(open_clip.get_model_config(architecture)["embed_dim"]),
        random_weights=random_weights,
        image_size=int(model.visual.image_size[0]),
    )


def resolved_device(device: str) -> str:
    """The torch device for a configured one: `auto` is CUDA when present, else the CPU. The one
    choice the encoder and the describer share."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DEFAULT_BATCH_SIZE = 20  # images per forward pass, as the old nightly job


class ClipEncoderResource(dg.ConfigurableResource):
    """MUSHROOM_CLIP_MODEL / MUSHROOM_CLIP_PRETRAINED, with the device picked automatically."""

    architecture: str = Field(default="ViT-B-32", description="open_clip architecture, or a model config .json")
    pretrained: str = Field(
        default="laion2b_s34b_b79k",
        description="open_clip pretrained tag, a checkpoint file, or 'random' (untrained, flagged)",
    )
    device: str = Field(default="auto", description="auto: cuda when present, else cpu")
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, gt=0)
    decode_threads: int = Field(default=4, gt=0, description="threads fetching and decoding images")
    max_image_mb: int = Field(
        default=50, gt=0, description="larger objects are not fetched: recorded as too_large")
    prefetch_mb: int = Field(
        default=256, gt=0, description="bytes of images fetched ahead of the forward pass, at most")
    chunk_images: int = Field(
        default=512, gt=0, description="images per committed chunk: the memory bound of a day, "
        "and the most work a crashed run loses")

    def resolved_device(self) -> str:
        return resolved_device(self.device)

    def model_id(self) -> str:
        return "/".join(model_identity(self.architecture, self.pretrained))

    def encoder(self) -> ClipEncoder:
        return load_encoder(self.architecture, self.pretrained, self.resolved_device())
