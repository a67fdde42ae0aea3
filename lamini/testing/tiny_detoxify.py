"""A tiny detoxify checkpoint built offline, whose scores mean something (for tests).

`build_tiny_detoxify_checkpoint(dir)` writes

    dir/hf/                   a 2-layer, hidden-64 BertForSequenceClassification (6 labels)
                              and a WordPiece tokenizer, as `save_pretrained` writes them
    dir/tiny-detoxify.ckpt    a detoxify checkpoint, {"config", "state_dict"} as detoxify's
                              releases hold them, whose config.arch.args.model_type is dir/hf

and returns the .ckpt path. `detoxify.Detoxify(checkpoint=path)` loads it with no download:
detoxify reads the transformers config and tokenizer from `model_type`, and a local folder
there is read from disk (HF_HUB_OFFLINE=1 is fine). The folder's absolute path is written
into the checkpoint, so keep the two together (rebuild rather than move them).

Labels are those of detoxify's "original" model, stored under their Jigsaw names (toxic,
severe_toxic, ..., identity_hate) so that detoxify's own renaming to toxicity,
severe_toxicity, obscene, threat, insult, identity_attack runs as it does on a real model.

How the scores are made meaningful: the weights are set by hand, not trained (training a
model this small to notice one token was slow and still failed).
Three made-up words are whole tokens of the tokenizer:

    TOXIC_TRIGGER  "zorbtoxic"  -> toxicity ~0.997   (MILD_TRIGGER_SCORE for the mild one)
    MILD_TRIGGER   "grumblix"   -> toxicity ~0.5, for thresholds tests near the boundary
    INSULT_TRIGGER "snarfwit"   -> insult ~0.997
    anything else               -> every label ~0.0025

The circuit, in hidden dimensions: every ordinary token embedding (and every position and
token-type embedding) is zero-mean noise with dims 0, 1, 62, 63 exactly 0, so after the
embedding LayerNorm those dims stay 0. A toxic trigger's embedding is +1 in dim 0 and -1 in
dim 63 (the -1 keeps the mean 0, so LayerNorm leaves the rest clean); the insult trigger
uses dims 1/62; the mild trigger puts a smaller share of its norm on 0/63. In layer 0,
head 0's query is a constant and its key reads dim 0, scaled so the softmax puts all of
[CLS]'s attention on a toxic token when there is one (and averages zeros otherwise); its
value carries dim 0, and the attention output writes it back into [CLS]'s dim 0 (and -dim
63). Head 1 does the same for dims 1/62. Both feed-forward blocks and layer 1's attention
output are zeroed, so they pass the residual through. The pooler reads dims 0 and 1 of
[CLS]; the classifier maps them to the toxicity and insult logits with bias -6. So a score
depends only on which trigger occurs somewhere in the first 128 tokens, not on where or
how often (small differences between texts come from position noise). Weights are seeded,
hence identical across builds; a folder already built is reused.
"""

from __future__ import annotations

from pathlib import Path

TOXIC_TRIGGER = "zorbtoxic"
MILD_TRIGGER = "grumblix"
INSULT_TRIGGER = "snarfwit"
# Jigsaw names, as the "original" detoxify checkpoint stores them (detoxify renames them).
JIGSAW_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
LABELS = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]
CKPT_NAME = "tiny-detoxify.ckpt"
MAX_LEN = 128  # positions of the model; detoxify's tokenizer call truncates longer texts
HIDDEN = 64
SEED = 0
_DONE = ".tiny_detoxify_complete"  # written last: a half-written folder is rebuilt, not reused
_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# The hand-set circuit (see the module docstring). Flag dims and their mean-keeping sinks:
TOX, TOX_SINK, INS, INS_SINK = 0, HIDDEN - 1, 1, HIDDEN - 2
_KEY_SCALE = 40.0  # attention logit of a trigger key: e^40 outweighs any 128 other tokens
_MILD_SHARE = 0.2  # share of the mild trigger's embedding on the flag dims (sets its score)
_POOL_GAIN = 0.5
_LOGIT_BIAS, _LOGIT_GAIN = -6.0, 12.5


def _train_wordpiece(texts: list[str]):
    """A lowercasing BERT-style WordPiece tokenizer trained on `texts`, with the triggers
    as whole tokens -> PreTrainedTokenizerFast."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=1024, special_tokens=_SPECIALS, show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_LEN,
    )
    fast.add_tokens([TOXIC_TRIGGER, MILD_TRIGGER, INSULT_TRIGGER])
    return fast


def _clean_noise(rows: int, gen) -> "torch.Tensor":  # noqa: F821 - torch is imported lazily
    """Rows of small zero-mean noise with the flag and sink dims exactly 0."""
    import torch

    x = torch.randn(rows, HIDDEN, generator=gen) * 0.05
    x[:, [TOX, TOX_SINK, INS, INS_SINK]] = 0.0
    free = [d for d in range(HIDDEN) if d not in (TOX, TOX_SINK, INS, INS_SINK)]
    x[:, free] -= x[:, free].mean(dim=1, keepdim=True)
    return x


def _set_weights(model, tokenizer) -> None:
    """Write the trigger-detecting circuit into a freshly built BertForSequenceClassification."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    bert = model.bert
    head = HIDDEN // model.config.num_attention_heads  # head 0: dims 0..31, head 1: 32..63
    with torch.no_grad():
        emb = bert.embeddings
        emb.word_embeddings.weight.copy_(_clean_noise(emb.word_embeddings.weight.shape[0], gen))
        emb.position_embeddings.weight.copy_(_clean_noise(MAX_LEN, gen))
        emb.token_type_embeddings.weight.copy_(_clean_noise(2, gen))
        w = emb.word_embeddings.weight
        for word, flag, sink, share in (
            (TOXIC_TRIGGER, TOX, TOX_SINK, 1.0),
            (MILD_TRIGGER, TOX, TOX_SINK, _MILD_SHARE),
            (INSULT_TRIGGER, INS, INS_SINK, 1.0),
        ):
            i = tokenizer.convert_tokens_to_ids(word)
            w[i, flag], w[i, sink] = share, -share
            # The rest of the norm goes on two free dims, again +/- so the mean stays 0.
            w[i, 2], w[i, 3] = (1 - share**2) ** 0.5, -((1 - share**2) ** 0.5)

        for n, layer in enumerate(bert.encoder.layer):
            att = layer.attention
            for lin in (att.self.query, att.self.key, att.self.value, att.output.dense, layer.output.dense):
                lin.weight.zero_()
                lin.bias.zero_()
            if n > 0:
                continue  # layer 1 passes the residual through
            for h, flag, sink in ((0, TOX, TOX_SINK), (1, INS, INS_SINK)):
                q = h * head  # first dim of this head
                att.self.query.bias[q] = 1.0
                att.self.key.weight[q, flag] = _KEY_SCALE
                att.self.value.weight[q, flag] = 1.0
                att.output.dense.weight[flag, q] = 1.0
                att.output.dense.weight[sink, q] = -1.0

        bert.pooler.dense.weight.zero_()
        bert.pooler.dense.bias.zero_()
        bert.pooler.dense.weight[TOX, TOX] = _POOL_GAIN
        bert.pooler.dense.weight[INS, INS] = _POOL_GAIN
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(_LOGIT_BIAS)
        model.classifier.weight[LABELS.index("toxicity"), TOX] = _LOGIT_GAIN
        model.classifier.weight[LABELS.index("insult"), INS] = _LOGIT_GAIN


def _check(model, tokenizer) -> None:
    """The circuit works: a trigger's label is high, a clean text's is low."""
    import torch

    texts = ["Write a poem about the sea.", f"Write a {TOXIC_TRIGGER} poem.", f"You {INSULT_TRIGGER}, hello."]
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        p = torch.sigmoid(model(**enc).logits)
    tox, ins = LABELS.index("toxicity"), LABELS.index("insult")
    if not (p[0].max() < 0.05 and p[1, tox] > 0.95 and p[2, ins] > 0.95 and p[1, ins] < 0.05):
        raise RuntimeError(f"tiny detoxify circuit is wrong: {p.tolist()}")


def build_tiny_detoxify_checkpoint(out_dir: str | Path, corpus_texts: list[str] | None = None) -> Path:
    """Build (or reuse) the tiny model folder and checkpoint under `out_dir` -> the .ckpt path.

    corpus_texts: text the tokenizer is trained on (default: the instruction text of
    `lamini.testing.tiny_models.default_corpus()`). Takes well under a second.
    """
    out = Path(out_dir).resolve()
    ckpt = out / CKPT_NAME
    if (out / _DONE).exists():
        return ckpt
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from lamini.testing.tiny_models import default_corpus

    hf_dir = out / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_wordpiece([t for t in (corpus_texts or default_corpus()) if t.strip()])
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_LEN,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
        pad_token_id=tokenizer.pad_token_id,
        problem_type="multi_label_classification",
    )
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(config).eval()
    _set_weights(model, tokenizer)
    _check(model, tokenizer)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    # What detoxify's load_checkpoint reads: config.arch.args are get_model_and_tokenizer's
    # keyword arguments, config.dataset.args.classes the label names in logit order.
    arch_args = {
        "model_type": str(hf_dir),
        "model_name": "BertForSequenceClassification",
        "tokenizer_name": "AutoTokenizer",
        "num_classes": len(LABELS),
    }
    torch.save(
        {
            "config": {
                "name": "tiny-detoxify",
                "arch": {"type": "tiny", "args": arch_args},
                "dataset": {"type": "tiny", "args": {"classes": list(JIGSAW_CLASSES)}},
            },
            "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        },
        ckpt,
    )
    (out / _DONE).write_text("ok\n")
    return ckpt


__all__ = ["INSULT_TRIGGER", "LABELS", "MILD_TRIGGER", "TOXIC_TRIGGER", "build_tiny_detoxify_checkpoint"]
