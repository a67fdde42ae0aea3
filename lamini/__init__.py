"""lamini: distil a teacher LLM into small student models on Ray.

Importing this package is cheap on purpose: no torch, transformers, vllm or deepspeed
is loaded until a stage that needs them runs (a test checks it in a fresh subprocess).
"""

__version__ = "0.1.0"

# The paper's system message for sequence distillation (LaMini-LM, section 3.2).
SYSTEM_PROMPT = (
    "You are a helpful assistant, but you must respond the provided instructions as concise as possible."
)
