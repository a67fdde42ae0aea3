"""Dataset analysis: the paper's Table 1 (token statistics), Table 2 (MATTR) and Figure 2 (t-SNE).

    from lamini.analysis.report import run_analyze      # the `lamini analyze` stage
    from lamini.analysis.mattr import mattr             # MATTR of a text stream
    from lamini.analysis.embed import embed_texts       # sentence embeddings / TF-IDF+SVD fallback

Modules: ``mattr`` (exact, mergeable MATTR with lexicalrichness tokenisation), ``stats``
(per-block summaries and their driver-side merge: counts, unique hashes, samples), ``embed``
(embeddings, t-SNE, scatter plots), ``report`` (input resolution, the Ray Data pass, Markdown,
JSON and PNG output), ``config`` (AnalyzeConfig). The paper's Tables 1-2 come from lamini.paper.
Importing this package loads no Ray, torch, transformers or sentence-transformers.
"""

from lamini.analysis.mattr import MattrState, mattr, mattr_tokens

__all__ = ["MattrState", "mattr", "mattr_tokens"]
