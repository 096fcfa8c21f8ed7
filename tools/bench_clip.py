"""``python tools/bench.py clip``: tokenizer, prompt-learner step and image-encoding timings (clip/bench.py)."""
from clip.bench import main  # noqa: F401
