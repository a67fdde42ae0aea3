"""Evaluating students: batch inference on Ray actors (vLLM or HF), the hallucination and toxicity
probes, the lm-evaluation-harness runner and student throughput. Nothing heavy is imported here."""
