"""PECR checkpoints: the model's own state (never the frozen CLIP weights unless asked), atomic
writes, clear errors, and a loader for the authors' released checkpoints (docs/method.md §4).

    save_checkpoint(path, {"model": model_state(model), "optimizer": opt.state_dict(), "iteration": it})
    ckpt = load_checkpoint(path)                 # PECRError: missing / corrupt / not a PECR checkpoint
    load_model_state(model, ckpt["model"])       # PECRError: other dataset / feature width / CLIP width
    report = load_release_checkpoint(model, "PECR_release.pkl")   # authors' parameter names
    print(report.summary())

The frozen CLIP is referenced by name (``config["clip_backbone"]``, i.e. ``--clip-backbone``) and
rebuilt by ``model.build_model``; ``model_state(model, include_clip=True)`` stores it as well.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.errors import PECRError
from utils.io import atomic_save

FORMAT = "pecr-checkpoint"
VERSION = 1
CLIP_PREFIX = "text_encoder.clip_model."

# ----------------------------------------------------------------------------- own checkpoints


def model_state(model: nn.Module, include_clip: bool = False) -> dict[str, Any]:
    """{"config": shape-defining settings, "state_dict": tensors} of a :class:`model.PECR`.

    The state holds the trainable parameters and persistent buffers; the frozen CLIP weights
    (keys ``text_encoder.clip_model.*``) are left out unless ``include_clip``.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()
             if include_clip or not k.startswith(CLIP_PREFIX)}
    config = dict(model.config()) if hasattr(model, "config") else {}
    config["clip_backbone"] = getattr(model, "clip_backbone", None)
    config["includes_clip"] = include_clip
    return {"config": config, "state_dict": state}


def load_model_state(model: nn.Module, state: dict[str, Any], strict: bool = True) -> dict[str, list[str]]:
    """Load ``model_state`` output (or a bare state dict) into ``model`` after checking it fits.

    Raises PECRError on a class-count, feature-width or CLIP-width mismatch, on a tensor whose
    shape differs, and (``strict``) on missing or unexpected keys. CLIP keys are never required,
    and CLIP keys the model lacks (its unused image tower, say) are skipped.
    Returns {"missing": [...], "unexpected": [...]} (non-empty only when not strict).
    """
    if not isinstance(state, dict):
        raise PECRError(f"model state is a {type(state).__name__}, expected a dict from model_state()")
    sd, config = (state["state_dict"], state.get("config", {})) if "state_dict" in state else (state, {})
    _check_config(model, config)
    own = model.state_dict()
    for key, value in sd.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise PECRError(f"checkpoint tensor {key} has shape {tuple(value.shape)}, the model expects "
                            f"{tuple(own[key].shape)}: checkpoint made with other --feature-size / --clip-backbone?")
    # CLIP keys are optional both ways: a model built without CLIP's unused parts ignores them
    missing = sorted(k for k in own if k not in sd and not k.startswith(CLIP_PREFIX))
    unexpected = sorted(k for k in sd if k not in own and not k.startswith(CLIP_PREFIX))
    if strict and (missing or unexpected):
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise PECRError(f"checkpoint does not match the model ({what}, {len(missing)} missing, "
                        f"{len(unexpected)} unexpected keys): made by another version of the model?")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return {"missing": missing, "unexpected": unexpected}


def _check_config(model: nn.Module, config: dict[str, Any]) -> None:
    mine = model.config() if hasattr(model, "config") else {}
    checks = [
        ("num_classes", lambda a, b: f"checkpoint has {a} classes, dataset has {b}: trained on another dataset?"),
        ("feature_size", lambda a, b: f"checkpoint was trained on {a}-d features, the model has {b} "
                                      "(--feature-size): trained on other features?"),
        ("clip_dim", lambda a, b: f"checkpoint has CLIP width {a} ({config.get('clip_backbone')}), the model has {b} "
                                  "(--clip-backbone): trained with another CLIP?"),
    ]
    for key, message in checks:
        if key in config and key in mine and config[key] != mine[key]:
            raise PECRError(message(config[key], mine[key]))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (a dict: model state, optimizer, iteration, ...) atomically with a format tag."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    atomic_save(path, lambda f: torch.save(data, f))


def _safe_globals() -> list:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")] if hasattr(np, "dtypes") else []
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def _torch_load(path: Path, map_location, trusted: bool, what: str, mmap: bool = False) -> Any:
    if not path.is_file():
        raise PECRError(f"{what} {path} not found; check the path (or train first / drop --resume)")
    mmap = mmap and zipfile.is_zipfile(path)  # memory-mapping needs torch.save's zip format
    try:
        if trusted:
            return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise PECRError(f"{what} {path} holds Python objects beyond tensors, numbers and arrays; load it "
                            "with trusted=True only if you trust its source") from None
        raise PECRError(f"{what} {path} is corrupt or not a torch file; delete it and re-create it") from None
    except Exception as err:  # text files, truncated or foreign pickles fail in many ways deep in the unpickler
        raise PECRError(f"{what} {path} is corrupt or not a torch checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'truncated'}); check the path or re-create the file") from None


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", trusted: bool = False,
                    mmap: bool = False) -> Any:
    """The raw content of a checkpoint file, ours or the authors' release (read once, dispatch with
    :func:`is_pecr_checkpoint`). Loads with ``weights_only`` (tensors, containers, numbers, strings,
    numpy arrays, e.g. RNG states); ``trusted=True`` allows arbitrary pickled objects; ``mmap=True``
    maps the tensors instead of reading them (cheap when only the metadata is needed).
    PECRError when the file is missing or corrupt / unreadable."""
    return _torch_load(Path(path), map_location, trusted, "checkpoint", mmap)


def is_pecr_checkpoint(data: Any) -> bool:
    """True for what :func:`save_checkpoint` writes."""
    return isinstance(data, dict) and data.get("format") == FORMAT


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    trusted: bool = False, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (see :func:`read_checkpoint`); PECRError
    also when it is not a PECR checkpoint."""
    return check_checkpoint(read_checkpoint(path, map_location, trusted, mmap), path)


def check_checkpoint(data: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``data`` (from :func:`read_checkpoint`) if it is a PECR checkpoint this code reads, else PECRError."""
    if not is_pecr_checkpoint(data):
        hint = (" (it looks like a bare state dict, e.g. the authors' release: use load_release_checkpoint)"
                if isinstance(data, dict) and data and all(torch.is_tensor(v) for v in data.values()) else "")
        raise PECRError(f"{path} is not a PECR checkpoint{hint}")
    if data.get("version", 0) > VERSION:
        raise PECRError(f"checkpoint {path} has format version {data['version']}, this code reads up to {VERSION}: "
                        "update the code")
    return data


# ----------------------------------------------------------------------------- authors' release

# The single table to adjust. Release module (model class TSM) -> our module; each maps its
# ``.weight`` and ``.bias``. Top-level names are those of docs/method.md §4; inside vAttn / fAttn the release
# names its nn.Sequential blocks AE_e (e), AE_d (r), channel_conv (g), bit_wise_attn (l) and
# attention (convolutions at indices 0, 3, 5), as in the authors' public code (PVLR, same code base).
_CONSENSUS = {
    "AE_e.0": "encoder",
    "AE_d.0": "decoder",
    "channel_conv.0": "global_conv",
    "bit_wise_attn.0": "local_conv",
    "attention.0": "attn_conv1",
    "attention.3": "attn_conv2",
    "attention.5": "attn_conv3",
}
RELEASE_MODULES = {
    **{f"vAttn.{k}": f"consensus_v.{v}" for k, v in _CONSENSUS.items()},
    **{f"fAttn.{k}": f"consensus_f.{v}" for k, v in _CONSENSUS.items()},
    "fusion.0": "fusion1",
    "fusion2.0": "fusion2",
    "snippet_prob_encoder.fc_mean": "adapter.fc_mean",
    "snippet_prob_encoder.fc_var": "adapter.fc_var",
}
RELEASE_PARAMS = {"embedding.weight": "text_encoder.prompt_table"}    # the shared prompt table P
RELEASE_IGNORED = ("fc_clip.", "text_prob_encoder.", "snippet_prob_encoder.layer_norm.")  # unused by the method
RELEASE_CLIP = "clipmodel."                                           # frozen CLIP -> text_encoder.clip_model.


@dataclass
class ReleaseReport:
    """Outcome of :func:`convert_release_state_dict`: release key -> our key, and what was left."""

    mapped: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)      # unused by the method (and CLIP unless kept)
    unexpected: list[str] = field(default_factory=list)   # release keys the table does not know
    missing: list[str] = field(default_factory=list)      # our keys the release did not provide

    def summary(self) -> str:
        return (f"release checkpoint: {len(self.mapped)} mapped, {len(self.ignored)} ignored, "
                f"{len(self.unexpected)} unexpected {self.unexpected[:4]}, {len(self.missing)} missing {self.missing[:4]}")


def _release_table() -> dict[str, str]:
    table = {f"{src}.{p}": f"{dst}.{p}" for src, dst in RELEASE_MODULES.items() for p in ("weight", "bias")}
    return {**table, **RELEASE_PARAMS}


def convert_release_state_dict(sd: dict[str, torch.Tensor], keep_clip: bool = False
                               ) -> tuple[dict[str, torch.Tensor], ReleaseReport]:
    """Rename a release state dict (``vAttn.*``, ``fusion.*``, ``embedding.weight``, ...) to ours.

    ``module.`` prefixes (DataParallel) are stripped. ``clipmodel.*`` is ignored (CLIP is rebuilt from
    --clip-backbone) unless ``keep_clip``, then mapped to ``text_encoder.clip_model.*``.
    """
    table, state, report = _release_table(), {}, ReleaseReport()
    for key, value in sd.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name in table:
            state[table[name]] = value
            report.mapped[name] = table[name]
        elif name.startswith(RELEASE_CLIP):
            if keep_clip:
                state[CLIP_PREFIX + name[len(RELEASE_CLIP):]] = value
                report.mapped[name] = CLIP_PREFIX + name[len(RELEASE_CLIP):]
            else:
                report.ignored.append(name)
        elif name.startswith(RELEASE_IGNORED):
            report.ignored.append(name)
        else:
            report.unexpected.append(name)
    report.missing = sorted(set(table.values()) - set(state))
    return state, report


def release_state_dict(data: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside the authors' file content ``data`` (possibly under "state_dict" / "model");
    PECRError unless it holds tensors under at least one release name (vAttn.*, fusion.*, ...)."""
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not any(torch.is_tensor(v) for v in data.values()):
        raise PECRError(f"{path} is neither a PECR checkpoint nor a state dict of tensors; expected best.pt / last.pt "
                        "of a run or the authors' released PECR weights")
    if not convert_release_state_dict(data)[1].mapped:
        raise PECRError(f"{path}: none of its {len(data)} keys is a PECR release name (vAttn.*, fusion.*, ...); "
                        "not a PECR release checkpoint?")
    return data


def load_release_checkpoint(model: nn.Module, path: str | os.PathLike, keep_clip: bool = False,
                            trusted: bool = False, data: Any = None) -> ReleaseReport:
    """Load the authors' released weights (a state dict, possibly under "state_dict"/"model") into ``model``.

    ``data``: the file's content when already read (:func:`read_checkpoint`); ``path`` then only
    names it in messages. Shapes are checked (PECRError on mismatch); keys the release lacks keep
    their current values and are listed in ``report.missing``.
    """
    path = Path(path)
    if data is None:
        data = _torch_load(path, "cpu", trusted, "release checkpoint")
    data = release_state_dict(data, path)
    state, report = convert_release_state_dict(data, keep_clip)
    load_model_state(model, state, strict=False)
    return report
