"""PECR's own CLIP: model, tokenizer, loader and prompt learner (docs/method.md §2.2, §7).

    model = clip.load("RN50")                       # or a file path, or "random-tiny"
    tokens = clip.tokenize(["clean and jerk"])      # (1, 77) int64
    features = model.encode_text(tokens)            # (1, model.embed_dim)
    learner = clip.PromptLearner(model, ["clean and jerk", "long jump"])
    text_features = learner()                       # (3, model.embed_dim): 2 classes + background
"""
from clip.cache import cache_root, download
from clip.loader import MODEL_URLS, RANDOM_MODELS, available_models, load, load_state_dict
from clip.model import CLIP, CONFIGS, build_model, config_from_state_dict, random_model, tiny_config
from clip.prompt import PromptLearner
from clip.tokenizer import SimpleTokenizer, find_vocab, get_tokenizer, set_vocab_path, tokenize

__all__ = [
    "CLIP", "CONFIGS", "MODEL_URLS", "RANDOM_MODELS", "PromptLearner", "SimpleTokenizer", "available_models",
    "build_model", "cache_root", "config_from_state_dict", "download", "find_vocab", "get_tokenizer", "load",
    "load_state_dict", "random_model", "set_vocab_path", "tiny_config", "tokenize",
]
