"""Config of `lamini analyze` (Tables 1-2 and Figure 2 of the paper); every default lives here."""

from __future__ import annotations

from pydantic import Field

from lamini.config import RayInitConfig, StrictModel


class AnalyzeConfig(StrictModel):
    """`lamini analyze`: Tables 1-2 and Figure 2 of the paper for a dataset."""

    input: str = Field(description="A run directory (its dataset/ is read) or a LaMini-schema Parquet file/folder.")
    output_dir: str | None = Field(None, description="Where the report goes (default: INPUT/report).")
    group_by: str = Field("instruction_source", description="Column whose values are the subsets of the tables.")
    tokenizer: str = Field(
        "whitespace", description="`whitespace`, or a tokenizer id/folder for AutoTokenizer (token counts of Table 1)."
    )
    mattr_window: int = Field(50, ge=2, description="MATTR moving window (paper: 50).")
    embedding_model: str | None = Field(
        None, description="sentence-transformers model id/folder; None = the TF-IDF + SVD fallback (offline, documented)."
    )
    tsne_pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="Pairs of subsets to compare in t-SNE plots (default: the two largest)."
    )
    tsne_sample: int = Field(2000, ge=10, description="Rows sampled per subset for t-SNE.")
    seed: int = Field(0, description="Sampling and t-SNE seed.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")
