"""The local ``TextGrounder``: ``transformers``' zero-shot object detectors in this process.

The model does the detecting and ``transformers``' processor its own pre- and post-processing (the answers equal
the library's), so this module only turns phrases into each family's text input and its output into
``Instance``s labelled with the phrase they matched.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from .grounding import GroundingFailed, GroundingParameters, Instance, best_instances

SUPPORTED = {"grounding-dino": "Grounding DINO", "owlv2": "OWLv2", "sam3": "SAM 3"}


class TransformersGrounder:
    """Runs ``model`` (Grounding DINO, OWLv2 or SAM 3, told apart by ``model.config.model_type``) with its
    ``processor``. One detection at a time (a lock): the model is not made for concurrent calls, and on a CPU two
    at once are no faster than one after the other.

    ``bf16``: run the forward pass under bfloat16 autocast (CPUs with native bf16, CUDA); boxes move by a
    fraction of a pixel.
    """

    def __init__(self, model, processor, *, model_id: str, weights: str = "real", bf16: bool = False) -> None:
        self.family = model.config.model_type
        if self.family not in SUPPORTED:
            raise ValueError(f"{model_id} is a {self.family!r} model; text prompts run {', '.join(SUPPORTED.values())}")
        self.model, self.processor = model.eval(), processor
        self.model_id, self.weights, self.bf16 = model_id, weights, bf16
        self._lock = threading.Lock()

    def ground(self, pixels: np.ndarray, phrases: list[str], params: GroundingParameters) -> list[Instance]:
        from PIL import Image

        height, width = pixels.shape[:2]
        image = Image.fromarray(pixels)
        detect = {"grounding-dino": self._grounding_dino, "owlv2": self._owlv2, "sam3": self._sam3}[self.family]
        try:
            with self._lock:
                instances = detect(image, phrases, params)
        except Exception as error:
            raise GroundingFailed(f"the {SUPPORTED[self.family]} detector failed: {error}") from error
        return best_instances(instances, params, width, height)

    def _forward(self, inputs):
        import torch

        device = next(self.model.parameters()).device
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            outputs = self.model(**inputs.to(device))
        for name in ("logits", "pred_boxes", "pred_logits", "pred_masks", "presence_logits"):
            value = getattr(outputs, name, None)
            if value is not None:
                setattr(outputs, name, value.float().cpu())
        return outputs

    def _grounding_dino(self, image, phrases: list[str], params: GroundingParameters) -> list[Instance]:
        """The phrases go in as one text, "dog. a red cat." (the model's prompt format); an instance is labelled
        with the phrase whose tokens it matches best."""
        import torch

        inputs = self.processor(images=image, text=". ".join(phrases) + ".", return_tensors="pt")
        outputs = self._forward(inputs)
        (result,) = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=params.box_threshold,
            text_threshold=params.text_threshold,
            target_sizes=[(image.height, image.width)],
        )
        # The same queries post-processing kept (score = the best token's probability above the threshold).
        probabilities = torch.sigmoid(outputs.logits[0])
        kept = probabilities.max(dim=-1).values > params.box_threshold
        token_phrase = _phrase_of_each_token(inputs["input_ids"][0].tolist(), self.processor.tokenizer)
        by_phrase = torch.full((int(kept.sum()), len(phrases)), -1.0)
        for token, phrase in enumerate(token_phrase):
            if phrase is not None and phrase < len(phrases):
                by_phrase[:, phrase] = torch.maximum(by_phrase[:, phrase], probabilities[kept, token])
        best = by_phrase.argmax(dim=-1).tolist()
        return [
            Instance(tuple(box), float(score), phrases[index])
            for box, score, index in zip(result["boxes"].tolist(), result["scores"].tolist(), best, strict=True)
        ]

    def _owlv2(self, image, phrases: list[str], params: GroundingParameters) -> list[Instance]:
        """Each phrase is its own query; the model scores every box against each. A phrase longer than the text
        tower's 16 tokens is cut to them."""
        inputs = self.processor(images=image, text=[phrases], truncation=True, return_tensors="pt")
        outputs = self._forward(inputs)
        (result,) = self.processor.post_process_grounded_object_detection(
            outputs, threshold=params.box_threshold, target_sizes=[(image.height, image.width)]
        )
        return [
            Instance(tuple(box), float(score), phrases[index])
            for box, score, index in zip(
                result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist(), strict=True
            )
        ]

    def _sam3(self, image, phrases: list[str], params: GroundingParameters) -> list[Instance]:
        """One concept prompt per phrase (SAM 3 takes a noun phrase at a time); its masks are dropped, the
        browser's decoder makes them from the boxes so the user can refine them."""
        instances = []
        for phrase in phrases:
            inputs = self.processor(images=image, text=phrase, return_tensors="pt")
            outputs = self._forward(inputs)
            (result,) = self.processor.post_process_instance_segmentation(
                outputs, threshold=params.box_threshold, target_sizes=[(image.height, image.width)]
            )
            instances += [
                Instance(tuple(box), float(score), phrase)
                for box, score in zip(result["boxes"].tolist(), result["scores"].tolist(), strict=True)
            ]
        return instances


def _phrase_of_each_token(input_ids: list[int], tokenizer) -> list[int | None]:
    """For each token of "dog. a red cat.", the index of its phrase (0 for "dog", 1 for "a red cat"); None for
    the special tokens and the full stops between phrases."""
    full_stop = tokenizer.convert_tokens_to_ids(".")
    specials = set(tokenizer.all_special_ids)
    phrase, out = 0, []
    for token in input_ids:
        if token == full_stop:
            out.append(None)
            phrase += 1
        elif token in specials:
            out.append(None)
        else:
            out.append(phrase)
    return out
