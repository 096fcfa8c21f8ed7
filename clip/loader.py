"""``clip.load``: official checkpoints (downloaded and cached), local files, or random weights."""
from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from clip.cache import ROOT_ENV, cache_root, download
from clip.model import CLIP, CONFIGS, build_model, random_model, tiny_config
from utils.device import resolve_device
from utils.errors import PECRError

# The 64-hex folder of each URL is the file's SHA-256 (docs/method.md §7).
MODEL_URLS = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
}
RANDOM_MODELS = {"random-tiny": tiny_config, "random-RN50": lambda: dict(CONFIGS["RN50"]),
                 "random-ViT-B/16": lambda: dict(CONFIGS["ViT-B/16"])}
RANDOM_SEED = 0


def available_models() -> list[str]:
    """Names :func:`load` downloads (the random-weight names are in ``RANDOM_MODELS``)."""
    return list(MODEL_URLS)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


FLAGS = {"backbone": "--clip-backbone", "download_root": "--clip-download-root"}  # as main.py / test.py name them


def load_state_dict(path: str | os.PathLike, flags: dict[str, str] = FLAGS) -> dict[str, torch.Tensor]:
    """The CLIP weights in a TorchScript archive (OpenAI's ``.pt`` release files) or in a plain
    ``torch.save``-d state dict (optionally under a ``"state_dict"`` key), on the CPU, dtype as stored."""
    path = Path(path)
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():           # TorchScript is deprecated, but it is the release format
                warnings.simplefilter("ignore", DeprecationWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
                state = state["state_dict"]
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise PECRError(f"cannot read CLIP checkpoint {path} ({reason}); the file is corrupt or not a CLIP "
                        f"checkpoint: delete it (a cached download is fetched again) or pass another {flags['backbone']}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PECRError(f"CLIP checkpoint {path} holds no state dict of tensors; pass OpenAI's .pt file or a "
                        "state dict saved with torch.save(model.state_dict(), path)")
    return dict(state)


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
         download_root: str | os.PathLike | None = None, flags: dict[str, str] = FLAGS) -> CLIP:
    """A CLIP in float32 and eval mode on ``device`` (``"auto"`` allowed).

    ``name_or_path``: an official name (:func:`available_models`; downloaded once into
    ``download_root``, default ``$PECR_CLIP_ROOT`` or ``~/.cache/clip``, SHA-256 verified), a file
    (TorchScript archive or state dict), or ``random-tiny`` / ``random-RN50`` / ``random-ViT-B/16``
    (deterministic random weights from a private generator; the global RNG is untouched).
    """
    device = resolve_device(device)
    name = str(name_or_path)
    if name in RANDOM_MODELS:
        model = random_model(RANDOM_MODELS[name](), seed=RANDOM_SEED)
    else:
        if name in MODEL_URLS:
            root = cache_root(download_root)
            path = download(MODEL_URLS[name], root,
                            hint=f"(or point {flags['download_root']} / ${ROOT_ENV} at a folder holding it, "
                                 f"or pass the file's path as {flags['backbone']})")
        else:
            path = Path(os.path.expanduser(name))
            if not path.is_file():
                choices = ", ".join([*MODEL_URLS, *RANDOM_MODELS])
                raise PECRError(f"CLIP backbone {name!r} is neither a model name ({choices}) nor an existing "
                                f"file; fix {flags['backbone']}")
        state = load_state_dict(path, flags)
        try:
            model = build_model(state, copy=False)
        except PECRError as err:
            raise PECRError(f"CLIP checkpoint {path}: {err}") from None
    return model.to(device).eval()
