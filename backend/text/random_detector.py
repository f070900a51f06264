"""Seeded random detectors of the families the server runs, built offline from ``transformers`` configs: the
stand-in when no real text model can be had (flagged "random", like the random SAM weights), and the tiny
models of the tests and benchmarks.

The tokenizers come from a vocabulary written here, not downloaded: a WordPiece vocabulary of single characters
(BERT, for Grounding DINO) and a byte-level BPE vocabulary without merges (CLIP, for OWLv2), so any text
tokenizes, one token per character.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

FAMILIES = ("grounding-dino", "owlv2")
RANDOM_SEED = 0
# OWLv2's text tower reads 16 tokens (its processor pads every phrase to that).
CLIP_TEXT_TOKENS = 16
# Characters a phrase is tokenized into; anything else becomes [UNK] (BERT) or its bytes (CLIP).
_CHARACTERS = string.ascii_lowercase + string.digits


def character_vocabulary() -> list[str]:
    """BERT WordPiece tokens: the specials, punctuation Grounding DINO uses, each character alone and as a
    continuation ("##a"), so a word splits into its characters."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return specials + list(".,-'") + list(_CHARACTERS) + ["##" + c for c in _CHARACTERS]


def _byte_characters() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's table: printable bytes as themselves,
    the others shifted past 255)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    characters, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            characters[byte] = chr(byte)
        else:
            characters[byte] = chr(256 + shift)
            shift += 1
    return [characters[byte] for byte in range(256)]


def bert_tokenizer(folder: Path | None = None):
    """A ``BertTokenizer`` over ``character_vocabulary()`` (written to ``folder/vocab.txt`` when given)."""
    from transformers import BertTokenizer

    vocabulary = character_vocabulary()
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    return BertTokenizer(vocab={token: index for index, token in enumerate(vocabulary)})


def clip_tokenizer():
    """A ``CLIPTokenizer`` over the 256 byte characters (alone and word-final) and CLIP's two specials, no merges."""
    from transformers import CLIPTokenizer

    bytes_ = _byte_characters()
    tokens = bytes_ + [c + "</w>" for c in bytes_] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as folder:
        vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab.write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
        merges.write_text("#version: 0.2\n")
        return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=CLIP_TEXT_TOKENS)


def grounding_dino(*, real_size: bool = False, image_size: int = 800, seed: int = RANDOM_SEED):
    """``(GroundingDinoForObjectDetection, GroundingDinoProcessor)`` with seeded random weights.

    ``real_size``: the architecture of ``IDEA-Research/grounding-dino-tiny`` (Swin-T, BERT-base, 900 queries),
    for benchmarks; else a small model (a few hundred thousand weights) that runs in well under a second.
    ``image_size``: the processor's shortest side (the real model's is 800, longest 1333).
    """
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
        SwinConfig,
    )

    tokenizer = bert_tokenizer()
    if real_size:
        config = GroundingDinoConfig(text_config=BertConfig(vocab_size=len(tokenizer)))
    else:
        backbone = SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 2, 2],
            window_size=4,
            out_features=["stage2", "stage3", "stage4"],
        )
        text = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        )
        # Two decoder layers: with one, transformers' tying of the per-layer box heads has nothing to tie.
        config = GroundingDinoConfig(
            backbone_config=backbone,
            text_config=text,
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            num_queries=30,
        )
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil(
            size={"shortest_edge": image_size, "longest_edge": image_size * 1333 // 800}
        ),
        tokenizer=tokenizer,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config).eval()
    return model, processor


def owlv2(*, image_size: int = 960, seed: int = RANDOM_SEED):
    """``(Owlv2ForObjectDetection, Owlv2Processor)``, small, with seeded random weights; ``image_size`` is the
    square the processor pads and resizes to (the real model's is 960)."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    tokenizer = clip_tokenizer()
    patch = 16
    config = Owlv2Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=CLIP_TEXT_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
        ),
        projection_dim=32,
    )
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessorPil(size={"height": image_size, "width": image_size}), tokenizer=tokenizer
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Owlv2ForObjectDetection(config).eval()
    return model, processor


BUILDERS = {"grounding-dino": grounding_dino, "owlv2": owlv2}


def save(folder: Path, family: str = "grounding-dino", **kwargs) -> Path:
    """Builds the random ``family`` detector and saves model and processor to ``folder`` (a ``SAM_TEXT_MODEL``)."""
    model, processor = BUILDERS[family](**kwargs)
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
