"""An optional image-to-text model (transformers) writing a short description per image.

Off unless MUSHROOM_DESCRIBER_MODEL names a model id or a local folder (BLIP, GIT, a
VisionEncoderDecoder captioner...): the old system's LLaMA descriptions, as a pluggable step.
"""

import functools
import threading
from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from mushroom_pipeline.images.encoder import ModelUnavailableError, resolved_device


@dataclass
class Describer:
    model: object
    image_processor: object
    tokenizer: object
    device: str
    model_id: str
    max_new_tokens: int
    lock: threading.Lock

    def describe(self, images: list) -> list[str]:
        import torch

        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with self.lock, torch.inference_mode():
            tokens = self.model.generate(
                pixel_values=pixels.to(self.device), max_new_tokens=self.max_new_tokens
            )
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]


@functools.lru_cache(maxsize=1)
def load_describer(model_id: str, device: str, max_new_tokens: int) -> Describer:
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
    )

    try:
        model = AutoModelForImageTextToText.from_pretrained(model_id).to(device).eval()
        image_processor = AutoImageProcessor.from_pretrained(model_id)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
    except Exception as err:  # no such folder, no network for a hub id, not an image-to-text model
        raise ModelUnavailableError(
            f"Cannot load the describer {model_id!r}: {type(err).__name__}: {err}. Fix or unset "
            "MUSHROOM_DESCRIBER_MODEL."
        ) from None
    return Describer(model, image_processor, tokenizer, device, model_id, max_new_tokens,
                     threading.Lock())


class DescriberResource(dg.ConfigurableResource):
    model: str | None = Field(default=None, description="transformers model id or folder; unset → off")
    device: str = Field(default="auto", description="auto: cuda when present, else cpu")
    max_new_tokens: int = Field(default=30, gt=0)

    def describer(self) -> Describer | None:
        if not self.model:
            return None
        return load_describer(self.model, resolved_device(self.device), self.max_new_tokens)
