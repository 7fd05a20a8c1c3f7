"""The optional meaning side of tool search: a small static embedding model that ships inside its wheel.

BM25 cannot find ``memory__delete_entities`` for "forget everything you know about Bob": they
share no word. ``wordllama`` (the ``semantic`` extra, ``pip install 'pml-gateway[semantic]'``)
carries its model in the wheel (``wordllama/weights/l2_supercat_256.safetensors``, token vectors
taken from LLaMA 2's embedding layer and trained for similarity, and its tokenizer config): a
text's vector is the mean of its tokens' vectors, so there is no network, no torch and no GPU.
``WordLlama.load`` looks for the tokenizer in ``wordllama/tokenizer/`` while the wheel puts it in
``wordllama/tokenizers/``; giving the package directory as ``cache_dir`` finds both files, and
``disable_download=True`` makes a missing file an error instead of a download, so the gateway never
reaches a hub (checked with ``HF_HUB_OFFLINE=1`` in a network namespace without any interface).

Measured on the 2-core machine: import 0.18 s and load 0.14 s (0.42 s of CPU in a fresh
interpreter, load average 0.6), once, in a worker thread at start-up; resident memory +55 MB (the 32,000 x
256 float32 matrix and the tokenizer); the 50 tools of the five real servers embed in about 5 ms,
a query in 0.03 ms (bench/search.py).
The extra costs about 70 MB on disk (wordllama 33 MB, tokenizers 12 MB and the huggingface_hub,
hf-xet, fsspec it pulls in), which is why it is an extra and not a default: without it search is
BM25 alone (bench/README.md has both).
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Texts to unit vectors, one row per text."""

    def __call__(self, texts: list[str]) -> np.ndarray: ...


class WordLlamaEmbedder:
    """``wordllama``'s bundled model, loaded from the wheel and never downloaded."""

    def __init__(self) -> None:
        # wordllama's import calls logging.basicConfig(level=INFO): put the root logger back as it was,
        # or every library's INFO lines would start reaching stderr at the first search.
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            import wordllama
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)

        self._model = wordllama.WordLlama.load(cache_dir=Path(wordllama.__file__).parent, disable_download=True)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._model.embedding.shape[1]), dtype=np.float32)
        vectors: np.ndarray = self._model.embed(texts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)  # a text of no token at all has no direction: 0


_load_lock = threading.Lock()


@functools.cache
def _load() -> Embedder | None:
    try:
        return WordLlamaEmbedder()
    except ImportError:
        return None
    except (OSError, ValueError) as exc:  # installed but damaged: search still works, by words
        log.warning("tool search without embeddings: wordllama's bundled model did not load (%s)", exc)
        return None


def load_embedder() -> Embedder | None:
    """The bundled model, loaded once; None without the ``semantic`` extra.

    The gateway calls it in a worker thread at start-up; the lock makes a search that comes
    before the load is done wait for that one load rather than start a second.
    """
    with _load_lock:
        return _load()
