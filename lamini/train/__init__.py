"""Student training: Ray Train + DeepSpeed ZeRO supervised fine-tuning, and Ray Tune searches.

config.py (pydantic, light), data.py (wrapper, labels, packing), strategy.py (every DeepSpeed
call), models.py (loading), loop.py (what each worker runs), trainer.py (`lamini train`),
tune.py (`lamini tune`), flops.py (MFU). Importing this package loads no torch or deepspeed.
"""
