"""Every hyper-parameter of PECR in one argparse parser.

Precedence (lowest to highest): built-in THUMOS14 defaults < dataset preset
(``--dataset``) < YAML experiment file (``--config``) < command line.

    opts = parse_args()                         # from sys.argv
    opts = parse_args(["--dataset", "activitynet", "--lr", "1e-4"])
    save_options(opts, "outputs/run/options.yaml")
    same = parse_args(["--config", "outputs/run/options.yaml"])   # exact round trip

Editing the defaults below (or a file in ``configs/``) is how ablations are run.
Section numbers refer to SPEC.md.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from utils.errors import PECRError

DATASETS = ("thumos", "activitynet", "synthetic")
THUMOS_TIOU = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
ANET_TIOU = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]

# Per-dataset values that differ from the THUMOS14 defaults of the parser (SPEC §1, §3, §4).
PRESETS: dict[str, dict[str, Any]] = {
    "thumos": {},
    "activitynet": {
        "feature_file": "features/ActivityNet1.2/ActivityNet1.2-I3D-JOINTFeatures.npy",
        "annotation_dir": "features/ActivityNet1.2-Annotations",
        "clip_feature_dir": "features/ActivityNet1.2-CLIP",
        "ambiguous_file": None,
        "train_subset": "training",
        "test_subset": "validation",
        "min_snippets": 11,
        "protocol": "activitynet",
        "tiou_thresholds": ANET_TIOU,
        "max_seqlen": 60,
        "train_topk": 5,
        "k_easy": 3,
        "k_hard": 3,
        "mining_m": 12,
        "lr": 3e-5,
        "weight_decay": 5e-5,
        "max_iter": 22001,
        "interval": 1000,
        "warmup_iter": 10000,
    },
    # Small planted-signal dataset generated on first use (tools/make_synthetic.py):
    # narrow features, a tiny random CLIP, a schedule that trains in about a minute on 2 CPU cores.
    "synthetic": {
        "feature_file": "features/synthetic/Synthetic/Synthetic-I3D-JOINTFeatures.npy",
        "annotation_dir": "features/synthetic/Synthetic-Annotations",
        "clip_feature_dir": "features/synthetic/Synthetic-CLIP",
        "ambiguous_file": None,
        "synthetic_generate": True,
        "feature_size": 256,
        "clip_backbone": "random-tiny",
        "synthetic_videos": 200,
        "synthetic_difficulty": 0.3,
        "max_seqlen": 64,
        "lr": 1e-3,
        "max_iter": 1001,
        "interval": 1000,
        "warmup_iter": 0,
        "eval_at_start": True,
        "mining_m": 8,
        "alpha4": 20.0,
    },
}


def _str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _optional_path(value: str) -> str | None:
    return None if value.lower() in ("", "none", "null") else value


def build_parser() -> argparse.ArgumentParser:
    """The parser with THUMOS14 defaults; presets and YAML are applied by :func:`parse_args`."""
    p = argparse.ArgumentParser(
        description="PECR: Probabilistic Embedding with CLIP Representation for WTAL",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    B = _str2bool

    g = p.add_argument_group("run")
    g.add_argument("--dataset", choices=DATASETS, default="thumos", help="dataset preset selecting per-dataset defaults")
    g.add_argument("--config", type=str, default=None, help="YAML experiment file; its keys are option names")
    g.add_argument("--model-name", dest="model_name", default="PECR", help="run name: outputs go to <output-dir>/<model-name>/")
    g.add_argument("--output-dir", dest="output_dir", default="outputs", help="root folder of run outputs")
    g.add_argument("--seed", type=int, default=3552, help="one seed for data sampling, initialisation and test-time sampling")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--deterministic", type=B, default=False, help="deterministic algorithms (bitwise-repeatable CUDA runs, slower); CPU runs are repeatable anyway")
    g.add_argument("--resume", type=B, nargs="?", const=True, default=False, help="continue the run in <output-dir>/<model-name>/ from its last checkpoint")

    g = p.add_argument_group("data (SPEC §1)")
    g.add_argument("--feature-file", dest="feature_file", default="features/Thumos14reduced/Thumos14reduced-I3D-JOINTFeatures.npy", help="object .npy array of per-video I3D joint features (T_i x feature_size)")
    g.add_argument("--annotation-dir", dest="annotation_dir", default="features/Thumos14reduced-Annotations", help="W-TALC annotation folder (classlist.npy, videoname.npy, ...)")
    g.add_argument("--clip-feature-dir", dest="clip_feature_dir", default="features/Thumos14reduced-CLIP", help="folder holding <split>/<videoname>.npy CLIP snippet features")
    g.add_argument("--clip-train-split", dest="clip_train_split", default="train", help="sub-folder of --clip-feature-dir with the training videos")
    g.add_argument("--clip-test-split", dest="clip_test_split", default="test", help="sub-folder of --clip-feature-dir with the test videos")
    g.add_argument("--ambiguous-file", dest="ambiguous_file", type=_optional_path, default="auto", help="THUMOS14 ambiguous regions excluded from evaluation: auto = <annotation-dir>/Ambiguous_test.txt when present, a path, or none")
    g.add_argument("--train-subset", dest="train_subset", default="validation", help="subset.npy value of the training videos")
    g.add_argument("--test-subset", dest="test_subset", default="test", help="subset.npy value of the test videos")
    g.add_argument("--min-snippets", dest="min_snippets", type=int, default=0, help="drop videos with fewer snippets (ActivityNet1.2: 11, i.e. drop <= 10)")
    g.add_argument("--feature-size", dest="feature_size", type=int, default=2048, help="I3D feature width: first half RGB, second half flow")
    g.add_argument("--feature-fps", dest="feature_fps", type=float, default=25.0, help="frame rate of the feature extraction")
    g.add_argument("--snippet-frames", dest="snippet_frames", type=int, default=16, help="frames per snippet (seconds = snippet * frames / fps)")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=10, help="videos per training batch")
    g.add_argument("--num-similar", dest="num_similar", type=int, default=3, help="pairs of videos sharing a class at the head of each batch")
    g.add_argument("--max-seqlen", dest="max_seqlen", type=int, default=320, help="snippets per training video after random perturbation")

    g = p.add_argument_group("synthetic data (tools/make_synthetic.py)")
    g.add_argument("--synthetic-generate", dest="synthetic_generate", type=B, default=False, help="generate the synthetic dataset at the data paths when it is missing")
    g.add_argument("--synthetic-annotations", dest="synthetic_annotations", type=_optional_path, default=None, help="real annotation folder whose videos/segments the synthetic data keeps (none: random ground truth)")
    g.add_argument("--synthetic-videos", dest="synthetic_videos", type=int, default=120, help="number of random videos (ignored with --synthetic-annotations)")
    g.add_argument("--synthetic-classes", dest="synthetic_classes", type=int, default=5, help="number of random classes (ignored with --synthetic-annotations)")
    g.add_argument("--synthetic-difficulty", dest="synthetic_difficulty", type=float, default=0.5, help="0 = trivially separable, 1 = signal buried in noise")
    g.add_argument("--synthetic-seed", dest="synthetic_seed", type=int, default=0, help="seed of the generated data")

    g = p.add_argument_group("model (SPEC §2)")
    g.add_argument("--clip-backbone", dest="clip_backbone", default="RN50", help="CLIP checkpoint: RN50 or ViT-B/16 (official weights, downloaded once and verified), a checkpoint file of any OpenAI CLIP architecture, or random-tiny / random-RN50 / random-ViT-B/16 (random weights)")
    g.add_argument("--clip-download-root", dest="clip_download_root", type=_optional_path, default=None, help="cache folder of CLIP checkpoints and the vocabulary (default: $PECR_CLIP_ROOT, else ~/.cache/clip)")
    g.add_argument("--clip-vocab", dest="clip_vocab", type=_optional_path, default=None, help="path of bpe_simple_vocab_16e6.txt.gz (default: $PECR_CLIP_VOCAB, the cache, or download)")
    g.add_argument("--dropout", type=float, default=0.5, help="dropout of the cross-modal consensus modules")
    g.add_argument("--fusion-dropout", dest="fusion_dropout", type=float, default=0.7, help="dropout of the fusion layers")
    g.add_argument("--init", choices=("pytorch", "xavier"), default="pytorch", help="head/adapter initialisation: pytorch (the layers' defaults, as the release) or xavier (CO2-Net: Xavier-uniform weights, zero biases)")
    g.add_argument("--num-prob-v", dest="num_prob_v", type=int, default=20, help="K, samples of the probabilistic embedding")
    g.add_argument("--prompt-prefix", dest="prompt_prefix", type=int, default=4, help="learnable prompt vectors before the class words")
    g.add_argument("--prompt-postfix", dest="prompt_postfix", type=int, default=4, help="learnable prompt vectors after the class words")
    g.add_argument("--prompt-init-std", dest="prompt_init_std", type=float, default=0.01, help="std of the prompt table initialisation")
    g.add_argument("--train-temperature", dest="train_temperature", type=float, default=8.0, help="tau_train dividing the training CAS")
    g.add_argument("--test-temperature", dest="test_temperature", type=float, default=0.03, help="tau_test dividing the cosine test CAS")
    g.add_argument("--train-sampling", dest="train_sampling", choices=("shortcut", "full"), default="shortcut", help="shortcut: draw the mean of K noises directly (same distribution, 1/K cost); full: draw K samples")
    g.add_argument("--test-sampling", dest="test_sampling", choices=("sample", "mean"), default="sample", help="sample: K seeded samples at test time as released; mean: z = mu")
    g.add_argument("--amp", choices=("off", "bf16"), default="off", help="mixed precision (a speed option, training and evaluation): bf16 runs the convolutions and linear layers of the head and adapter (with the element-wise ops between them) and the frozen CLIP text transformer's linears and attention in bfloat16 under torch.autocast; the CAS and its temperature, test-time sampling, softmaxes, logs, metric distances, CLIP distillation, every loss, the weights, the optimizer and checkpoints stay float32. For CPUs with BF16 instructions (AVX512-BF16, AMX) and recent GPUs; test.py does not inherit it from the checkpoint")

    g = p.add_argument_group("losses (SPEC §3)")
    g.add_argument("--train-topk", dest="train_topk", type=int, default=7, help="MIL k = max(1, T // train_topk)")
    g.add_argument("--alpha0", type=float, default=0.8, help="weight of the MIL classification loss")
    g.add_argument("--alpha1", type=float, default=0.8, help="weight of the attention norm loss")
    g.add_argument("--alpha2", type=float, default=0.8, help="weight of the guide loss")
    g.add_argument("--alpha3", type=float, default=1.0, help="weight of the co-activity loss")
    g.add_argument("--alpha4", type=float, default=200.0, help="weight of the CLIP distillation loss")
    g.add_argument("--alpha5", type=float, default=0.005, help="weight of the action distribution metric loss")
    g.add_argument("--alpha6", type=float, default=0.001, help="weight of the background distribution metric loss")
    g.add_argument("--alpha7", type=float, default=0.5, help="weight of the text orthogonality loss")
    g.add_argument("--suppress-min", dest="suppress_min", choices=("class", "time"), default="class", help="suppressed CAS S = A(CAS - min) + min with the min over the C+1 classes of each snippet (the release and CO2-Net) or over time per class")
    g.add_argument("--coactivity-margin", dest="coactivity_margin", type=float, default=0.5, help="margin of the co-activity hinge")
    g.add_argument("--k-easy", dest="k_easy", type=int, default=20, help="easy action / background snippets per video")
    g.add_argument("--k-hard", dest="k_hard", type=int, default=5, help="hard action / background snippets per video")
    g.add_argument("--mining-dropout", dest="mining_dropout", type=float, default=0.6, help="dropout probability of the easy-mining mask")
    g.add_argument("--mining-M", dest="mining_M", type=int, default=3, help="M, first erosion/dilation width of hard mining")
    g.add_argument("--mining-m", dest="mining_m", type=int, default=24, help="m, second erosion/dilation width of hard mining")
    g.add_argument("--hard-mining", dest="hard_mining", choices=("reference", "ring"), default="reference", help="reference: the release's {0,-1} masks; ring: the intended inner/outer rings")
    g.add_argument("--metric", choices=("kl", "bhattacharyya", "mahalanobis", "euclidean"), default="kl", help="distance between diagonal Gaussians")
    g.add_argument("--var-eps", dest="var_eps", type=float, default=1e-5, help="added to v to form sigma^2")

    g = p.add_argument_group("optimisation (SPEC §4)")
    g.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=1e-3, help="Adam weight decay")
    g.add_argument("--max-iter", dest="max_iter", type=int, default=9001, help="training iterations (0 .. max_iter-1)")
    g.add_argument("--interval", type=int, default=50, help="evaluate every this many iterations once past --warmup-iter")
    g.add_argument("--warmup-iter", dest="warmup_iter", type=int, default=3000, help="no evaluation up to this iteration")
    g.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=500, help="also write last.pt (the --resume point) every this many iterations")
    g.add_argument("--eval-at-start", dest="eval_at_start", type=B, default=False, help="also evaluate the untrained model at iteration 0")

    g = p.add_argument_group("inference and proposals (SPEC §5)")
    g.add_argument("--test-topk", dest="test_topk", type=int, default=20, help="video score k = max(1, T // test_topk)")
    g.add_argument("--vid-thresh", dest="vid_thresh", type=float, default=0.2, help="video-level class score threshold")
    g.add_argument("--cas-s", dest="cas_s", type=float, default=0.0, help="first CAS threshold")
    g.add_argument("--cas-e", dest="cas_e", type=float, default=0.95, help="last CAS threshold")
    g.add_argument("--cas-num", dest="cas_num", type=int, default=20, help="number of CAS thresholds")
    g.add_argument("--act-s", dest="act_s", type=float, default=0.1, help="first actionness threshold")
    g.add_argument("--act-e", dest="act_e", type=float, default=0.95, help="last actionness threshold")
    g.add_argument("--act-num", dest="act_num", type=int, default=20, help="number of actionness thresholds")
    g.add_argument("--gamma-oic", dest="gamma_oic", type=float, default=0.1, help="weight of the video score in the outer-inner contrast")
    g.add_argument("--oic-margin", dest="oic_margin", type=float, default=0.25, help="outer region length as a fraction of the proposal length")
    g.add_argument("--lone-first-snippet", dest="lone_first_snippet", choices=("skip", "keep"), default="skip", help="a threshold at which only snippet 0 is above it: skip = no proposal (the release, which tests indices.any()), keep = the single-snippet proposal [0, 1)")
    g.add_argument("--nms-sigma", dest="nms_sigma", type=float, default=0.3, help="Gaussian soft-NMS sigma")
    g.add_argument("--cls-topk", dest="cls_topk", choices=("release", "paper"), default="release", help="classification k: release = 1 (max over time), paper = ceil(T/8)")

    g = p.add_argument_group("evaluation (SPEC §6)")
    g.add_argument("--protocol", choices=("thumos", "activitynet"), default="thumos", help="reported thresholds, averages and best-checkpoint criterion")
    g.add_argument("--tiou-thresholds", dest="tiou_thresholds", type=float, nargs="+", default=THUMOS_TIOU, help="tIoU thresholds of detection mAP")
    return p


def _load_yaml(path: str, valid_keys: set[str]) -> dict[str, Any]:
    if not Path(path).is_file():
        raise PECRError(f"config file {path} not found; pass an existing YAML file to --config (see configs/)")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise PECRError(f"config file {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise PECRError(f"config file {path} must hold a mapping of option names to values")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - valid_keys)
    if unknown:
        raise PECRError(f"config file {path}: unknown option {unknown[0]!r}; option names are listed by `python main.py --help`")
    data.pop("config", None)
    return data


def parse_args(argv: Sequence[str] | None = None, base: dict[str, Any] | None = None) -> argparse.Namespace:
    """Resolve the options: defaults < preset < ``base`` < YAML < command line, then check every
    value against :data:`RANGES` and :func:`check_consistency` (PECRError naming the option).

    ``base`` is a saved option dict (e.g. the one stored in a checkpoint, used by test.py).
    """
    parser = build_parser()
    valid = {a.dest for a in parser._actions if a.dest != "help"}
    front = _front_parser(parser)
    first, _ = front.parse_known_args(argv)  # no --help yet: it must show the preset's defaults
    yaml_values = _load_yaml(first.config, valid) if first.config else {}
    base = {k: v for k, v in (base or {}).items() if k in valid and k != "config"}
    explicit = first.dataset if _given_on_command_line(front, argv, "dataset") else None
    dataset = explicit or yaml_values.get("dataset") or base.get("dataset") or "thumos"
    if dataset not in DATASETS:
        raise PECRError(f"config file {first.config}: dataset {dataset!r} is not one of {', '.join(DATASETS)}")
    defaults = {**PRESETS[dataset], **base, **yaml_values, "dataset": dataset}
    parser.set_defaults(**defaults)
    opts = parser.parse_args(argv)
    given = _given_on_command_line(parser, argv)
    source = lambda key: (f"--{key.replace('_', '-')}" if key in given
                          else f"{key} in {first.config}" if key in yaml_values
                          else f"{key} in the checkpoint's options" if key in base else f"--{key.replace('_', '-')}")
    check_types(parser, opts, source)
    check_ranges(opts, source)
    check_consistency(opts)
    return opts


def _front_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A copy of ``parser``'s --config and --dataset without -h, for the first pass."""
    front = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.dest in ("config", "dataset"):
            front._add_action(action)
    return front


# ----------------------------------------------------------------------------- validation
# The range of every numeric option, in one place: name -> (lowest, highest, inclusive bounds?).
# None = unbounded on that side. ``parse_args`` checks them whatever the source of the value
# (preset, YAML, checkpoint, command line), so a mistake costs seconds, not a failed run hours later.
CLOSED, OPEN, LEFT_OPEN, RIGHT_OPEN = "[]", "()", "(]", "[)"
RANGES: dict[str, tuple[float | None, float | None, str]] = {
    # run
    "seed": (0, 2**32 - 1, CLOSED),
    # data
    "min_snippets": (0, None, CLOSED),
    "feature_size": (4, None, CLOSED),           # and a multiple of 4 (check_consistency)
    "feature_fps": (0, None, OPEN),
    "snippet_frames": (1, None, CLOSED),
    "batch_size": (1, None, CLOSED),
    "num_similar": (0, None, CLOSED),
    "max_seqlen": (2, None, CLOSED),             # one snippet: every mined set is that snippet, log(1 - 1)
    # synthetic data
    "synthetic_videos": (2, None, CLOSED),
    "synthetic_classes": (1, None, CLOSED),
    "synthetic_difficulty": (0, 1, CLOSED),
    "synthetic_seed": (0, 2**32 - 1, CLOSED),
    # model
    "dropout": (0, 1, RIGHT_OPEN),
    "fusion_dropout": (0, 1, RIGHT_OPEN),
    "num_prob_v": (1, None, CLOSED),
    "prompt_prefix": (0, None, CLOSED),
    "prompt_postfix": (0, None, CLOSED),
    "prompt_init_std": (0, None, CLOSED),
    "train_temperature": (0, None, OPEN),
    "test_temperature": (0, None, OPEN),
    # losses
    "train_topk": (1, None, CLOSED),
    **{f"alpha{i}": (0, None, CLOSED) for i in range(8)},
    "coactivity_margin": (0, None, CLOSED),
    "k_easy": (1, None, CLOSED),
    "k_hard": (1, None, CLOSED),
    "mining_dropout": (0, 1, RIGHT_OPEN),
    "mining_M": (1, None, CLOSED),
    "mining_m": (1, None, CLOSED),
    "var_eps": (0, None, OPEN),                  # sigma^2 = v + var_eps is divided by and logged
    # optimisation
    "lr": (0, None, OPEN),
    "weight_decay": (0, None, CLOSED),
    "max_iter": (1, None, CLOSED),
    "interval": (1, None, CLOSED),
    "warmup_iter": (0, None, CLOSED),
    "checkpoint_every": (1, None, CLOSED),
    # inference and proposals
    "test_topk": (1, None, CLOSED),
    "vid_thresh": (0, 1, CLOSED),
    "cas_s": (0, 1, CLOSED),
    "cas_e": (0, 1, CLOSED),
    "cas_num": (1, None, CLOSED),
    "act_s": (0, 1, CLOSED),
    "act_e": (0, 1, CLOSED),
    "act_num": (1, None, CLOSED),
    "gamma_oic": (0, None, CLOSED),
    "oic_margin": (0, None, CLOSED),
    "nms_sigma": (0, None, OPEN),
    # evaluation (each threshold)
    "tiou_thresholds": (0, 1, LEFT_OPEN),
}


def _describe(low, high, bounds: str) -> str:
    text = lambda x: str(x) if isinstance(x, int) else f"{x:g}"
    parts = []
    if low is not None:
        parts.append(f"{'>=' if bounds[0] == '[' else '>'} {text(low)}")
    if high is not None:
        parts.append(f"{'<=' if bounds[1] == ']' else '<'} {text(high)}")
    return " and ".join(parts)


def in_range(value: float, low, high, bounds: str) -> bool:
    """Whether ``value`` lies in the interval given by ``low``, ``high`` and ``bounds`` (e.g. "[)")."""
    if low is not None and (value < low or (bounds[0] == "(" and value == low)):
        return False
    return high is None or not (value > high or (bounds[1] == ")" and value == high))


def check_types(parser: argparse.ArgumentParser, opts: argparse.Namespace, source=lambda k: k) -> None:
    """Every option has its declared type (YAML and saved values bypass argparse's conversion) and,
    for options with choices, one of them. Integral floats are not integers: ``max_iter: 3.7`` and
    ``batch_size: 2.5`` are refused, not truncated. Floats accept integers (converted)."""
    for action in parser._actions:
        key = action.dest
        if key in ("help", "config", "resume") or not hasattr(opts, key):
            continue
        value = getattr(opts, key)
        if value is False and action.choices and "off" in action.choices:
            value = "off"  # YAML 1.1 reads a bare `off` as false
        kind = action.type
        if action.nargs in ("+", "*"):
            if not isinstance(value, (list, tuple)) or not value:
                raise PECRError(f"{source(key)}: expected a non-empty list of numbers (YAML: {key}: [0.1, 0.5]), got {value!r}")
            items = []
            for item in value:
                items.append(_typed(item, kind, key, source))
            setattr(opts, key, items)
            continue
        if value is None and kind is _optional_path:
            continue
        value = _typed(value, kind, key, source)
        if action.choices is not None and value not in action.choices:
            raise PECRError(f"{source(key)}: {value!r} is not one of {', '.join(map(str, action.choices))}")
        setattr(opts, key, value)


def _typed(value, kind, key: str, source):
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PECRError(f"{source(key)}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PECRError(f"{source(key)}: expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise PECRError(f"{source(key)}: expected a finite number, got {value!r}")
        return float(value)
    if kind is _str2bool:
        if not isinstance(value, bool):
            raise PECRError(f"{source(key)}: expected true or false, got {value!r}")
        return value
    if not isinstance(value, str) or (kind is None and not value):
        raise PECRError(f"{source(key)}: expected a non-empty text value, got {value!r}")
    return value


def check_ranges(opts: argparse.Namespace, source=lambda k: k) -> None:
    """Every numeric option inside its :data:`RANGES` interval (lists: every element)."""
    for key, (low, high, bounds) in RANGES.items():
        values = getattr(opts, key, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and not in_range(value, low, high, bounds):
                raise PECRError(f"{source(key)} {value!r} is out of range: it must be {_describe(low, high, bounds)}")


def check_consistency(opts: argparse.Namespace) -> None:
    """Constraints between options (each message names them and the fix)."""
    if opts.feature_size % 4:
        raise PECRError(f"--feature-size {opts.feature_size} must be a multiple of 4 (RGB | flow halves, hidden width F/4)")
    if opts.batch_size < 2 * opts.num_similar:
        raise PECRError(f"--batch-size {opts.batch_size} cannot hold --num-similar {opts.num_similar} pairs of videos; "
                        f"use --batch-size >= {2 * opts.num_similar} or a smaller --num-similar")
    if opts.cas_s > opts.cas_e or opts.act_s > opts.act_e:
        raise PECRError(f"threshold ranges must run upwards: --cas-s {opts.cas_s:g} --cas-e {opts.cas_e:g}, "
                        f"--act-s {opts.act_s:g} --act-e {opts.act_e:g}")
    from eval.report import PROTOCOLS

    reported, averages = PROTOCOLS[opts.protocol]
    needed = sorted({*reported, *(t for ts in averages.values() for t in ts)})
    missing = [t for t in needed if not any(abs(t - x) < 1e-9 for x in opts.tiou_thresholds)]
    if missing:
        raise PECRError(f"--tiou-thresholds {' '.join(f'{t:g}' for t in opts.tiou_thresholds)} lacks {', '.join(f'{t:g}' for t in missing)}, "
                        f"which the {opts.protocol} protocol reports (--protocol); add them")


def _given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None, dest: str | None = None):
    """Whether option ``dest`` was given on the command line; without ``dest``, the set of those given."""
    sentinel = object()
    dests = [dest] if dest else [a.dest for a in parser._actions if a.dest != "help"]
    probe = argparse.Namespace(**{d: sentinel for d in dests})
    parser.parse_known_args(argv, namespace=probe)
    given = {d for d in dests if getattr(probe, d) is not sentinel}
    return dest in given if dest else given


def options_to_dict(opts: argparse.Namespace) -> dict[str, Any]:
    """Plain, YAML-safe dict of the resolved options, without the session-only ``config`` and ``resume``."""
    return {k: v for k, v in sorted(vars(opts).items()) if k not in ("config", "resume")}


def save_options(opts: argparse.Namespace, path: str | os.PathLike) -> None:
    """Write the resolved options as YAML (atomically); ``--config path`` reproduces them."""
    from utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(options_to_dict(opts), sort_keys=True))


def load_options(path: str | os.PathLike, overrides: Sequence[str] = ()) -> argparse.Namespace:
    """Options saved by :func:`save_options`, optionally overridden by command-line style arguments."""
    return parse_args(["--config", str(path), *overrides])
