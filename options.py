"""Every hyper-parameter of PECR in one argparse parser.

Precedence (lowest to highest): built-in defaults < dataset description (``--dataset``) < YAML
experiment file (``--config``) < command line.

    opts = parse_args()                         # from sys.argv (THUMOS14)
    opts = parse_args(["--dataset", "activitynet", "--lr", "1e-4"])
    opts = parse_args(["--dataset", "data/MyData.yaml"])          # a dataset of your own
    save_options(opts, "outputs/run/options.yaml")
    same = parse_args(["--config", "outputs/run/options.yaml"])   # exact round trip

A dataset description (configs/datasets/<name>.yaml, or any path) is a YAML file of option values:
the data, the evaluation protocol and the training presets to start from (:data:`DATASET_KEYS`,
:data:`PRESET_KEYS`, which the parser leaves unset), and optionally any other option. Editing the
defaults below (or a file in ``configs/``) is how ablations are run. Section numbers refer to
docs/method.md.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import yaml

from utils.errors import PECRError

ROOT = Path(__file__).resolve().parent
DESCRIPTIONS = ROOT / "configs" / "datasets"
DATASETS = ("thumos", "activitynet", "synthetic")  # shipped descriptions: configs/datasets/<name>.yaml
# Options that describe the session, not the run (where it runs, where it writes, how often it saves):
# they may differ when a run is resumed, and runs that differ only in them are the same experiment.
SESSION_OPTIONS = ("config", "resume", "device", "output_dir", "model_name", "checkpoint_every",
                   "clip_download_root", "clip_vocab", "deterministic", "save_raw", "raw_dtype",
                   "feature_loading", "feature_memory_gb", "features_on_device", "compile", "tf32")
THUMOS_TIOU = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
ANET_TIOU = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]

# What every dataset description must set (the parser leaves them unset): the data, the protocol
# and the training presets to start from. Descriptions may set any other option too.
DATASET_KEYS = ("feature_file", "annotation_dir", "clip_feature_dir", "train_subset", "test_subset",
                "feature_size", "feature_fps", "snippet_frames", "protocol", "tiou_thresholds")
PRESET_KEYS = ("max_seqlen", "train_topk", "k_easy", "k_hard", "mining_m", "lr", "weight_decay",
               "max_iter", "interval", "warmup_iter")


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
    """The parser with the defaults shared by every dataset (the data, protocol and training presets
    are left unset); dataset descriptions and YAML files are applied by :func:`parse_args`."""
    p = argparse.ArgumentParser(
        description="PECR: Probabilistic Embedding with CLIP Representation for WTAL",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    B = _str2bool

    g = p.add_argument_group("run")
    g.add_argument("--dataset", default="thumos", help=f"dataset description giving the per-dataset defaults: {', '.join(DATASETS)} (configs/datasets/<name>.yaml) or the path of a description .yaml")
    g.add_argument("--config", type=str, default=None, help="YAML experiment file; its keys are option names")
    g.add_argument("--model-name", dest="model_name", default="PECR", help="run name: outputs go to <output-dir>/<model-name>/")
    g.add_argument("--output-dir", dest="output_dir", default="outputs", help="root folder of run outputs")
    g.add_argument("--seed", type=int, default=3552, help="one seed for data sampling, initialisation and test-time sampling")
    g.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    g.add_argument("--tf32", type=B, default=False, help="CUDA: let float32 matrix products and convolutions use TensorFloat-32 (faster on Ampere and newer, about 3 significant digits); false keeps true float32 as the release computed it. No effect on the CPU")
    g.add_argument("--compile", type=B, default=False, help="torch.compile the model and the loss of the training step (CUDA: faster steps after a compilation of a minute or so at the first step; CPU: the compilation rarely pays off). Random draws follow eager PyTorch's, so runs are comparable with and without it")
    g.add_argument("--deterministic", type=B, default=False, help="deterministic algorithms (bitwise-repeatable CUDA runs, slower); CPU runs are repeatable anyway")
    g.add_argument("--resume", type=B, nargs="?", const=True, default=False, help="continue the run in <output-dir>/<model-name>/ from its last checkpoint")

    g = p.add_argument_group("data (docs/method.md §1)")
    g.add_argument("--feature-file", dest="feature_file", default=None, help="I3D joint features (T_i x feature_size per video): an object .npy array in videoname.npy order, or a folder of <video>.npy files")
    g.add_argument("--feature-loading", dest="feature_loading", choices=("auto", "memory", "lazy"), default="auto", help="memory: every feature read, checked and stacked in RAM at start (fastest batches); lazy: per-video files memory-mapped and read when used (RAM does not grow with the dataset; needs a feature folder); auto: memory up to --feature-memory-gb, else lazy")
    g.add_argument("--features-on-device", dest="features_on_device", choices=("auto", "on", "off"), default="auto", help="keep the in-memory features on the training device and gather batches there: auto = on CUDA when they take at most half of its free memory, on = always, off = copy each batch from (pinned) host memory; the same values either way")
    g.add_argument("--feature-memory-gb", dest="feature_memory_gb", type=float, default=4.0, help="auto loading: the largest I3D + CLIP feature size (GiB, float32) loaded into memory")
    g.add_argument("--annotation-dir", dest="annotation_dir", default=None, help="W-TALC annotation folder (classlist.npy, videoname.npy, ...)")
    g.add_argument("--clip-feature-dir", dest="clip_feature_dir", default=None, help="folder holding <split>/<videoname>.npy CLIP snippet features")
    g.add_argument("--clip-train-split", dest="clip_train_split", default="train", help="sub-folder of --clip-feature-dir with the training videos")
    g.add_argument("--clip-test-split", dest="clip_test_split", default="test", help="sub-folder of --clip-feature-dir with the test videos")
    g.add_argument("--ambiguous-file", dest="ambiguous_file", type=_optional_path, default="auto", help="THUMOS14 ambiguous regions excluded from evaluation: auto = <annotation-dir>/Ambiguous_test.txt when present, a path, or none")
    g.add_argument("--class-phrases", dest="class_phrases", type=_optional_path, default=None, help="YAML/JSON file mapping class names to the phrase of their text prompt; other classes (or none: all) use the default rule, CamelCase split and lower-cased")
    g.add_argument("--train-subset", dest="train_subset", default=None, help="subset.npy value of the training videos")
    g.add_argument("--test-subset", dest="test_subset", default=None, help="subset.npy value of the test videos")
    g.add_argument("--min-snippets", dest="min_snippets", type=int, default=0, help="drop videos with fewer snippets (ActivityNet1.2: 11, i.e. drop <= 10)")
    g.add_argument("--feature-size", dest="feature_size", type=int, default=None, help="I3D feature width: first half RGB, second half flow")
    g.add_argument("--feature-fps", dest="feature_fps", type=float, default=None, help="frame rate of the feature extraction")
    g.add_argument("--snippet-frames", dest="snippet_frames", type=int, default=None, help="frames per snippet (seconds = snippet * frames / fps)")
    g.add_argument("--batch-size", dest="batch_size", type=int, default=10, help="videos per training batch")
    g.add_argument("--num-similar", dest="num_similar", type=int, default=3, help="pairs of videos sharing a class at the head of each batch")
    g.add_argument("--max-seqlen", dest="max_seqlen", type=int, default=None, help="snippets per training video after random perturbation")

    g = p.add_argument_group("synthetic data (tools/make_synthetic.py)")
    g.add_argument("--synthetic-generate", dest="synthetic_generate", type=B, default=False, help="generate the synthetic dataset at the data paths when it is missing")
    g.add_argument("--synthetic-annotations", dest="synthetic_annotations", type=_optional_path, default=None, help="real annotation folder whose videos/segments the synthetic data keeps (none: random ground truth)")
    g.add_argument("--synthetic-videos", dest="synthetic_videos", type=int, default=120, help="number of random videos (ignored with --synthetic-annotations)")
    g.add_argument("--synthetic-classes", dest="synthetic_classes", type=int, default=5, help="number of random classes (ignored with --synthetic-annotations)")
    g.add_argument("--synthetic-difficulty", dest="synthetic_difficulty", type=float, default=0.5, help="0 = trivially separable, 1 = signal buried in noise")
    g.add_argument("--synthetic-seed", dest="synthetic_seed", type=int, default=0, help="seed of the generated data")

    g = p.add_argument_group("model (docs/method.md §2)")
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

    g = p.add_argument_group("losses (docs/method.md §3)")
    g.add_argument("--train-topk", dest="train_topk", type=int, default=None, help="MIL k = max(1, T // train_topk)")
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
    g.add_argument("--k-easy", dest="k_easy", type=int, default=None, help="easy action / background snippets per video")
    g.add_argument("--k-hard", dest="k_hard", type=int, default=None, help="hard action / background snippets per video")
    g.add_argument("--mining-dropout", dest="mining_dropout", type=float, default=0.6, help="dropout probability of the easy-mining mask")
    g.add_argument("--mining-M", dest="mining_M", type=int, default=3, help="M, first erosion/dilation width of hard mining")
    g.add_argument("--mining-m", dest="mining_m", type=int, default=None, help="m, second erosion/dilation width of hard mining")
    g.add_argument("--hard-mining", dest="hard_mining", choices=("reference", "ring"), default="reference", help="reference: the release's {0,-1} masks; ring: the intended inner/outer rings")
    g.add_argument("--metric", choices=("kl", "bhattacharyya", "mahalanobis", "euclidean"), default="kl", help="distance between diagonal Gaussians")
    g.add_argument("--var-eps", dest="var_eps", type=float, default=1e-5, help="added to v to form sigma^2")

    g = p.add_argument_group("optimisation (docs/method.md §4)")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    g.add_argument("--weight-decay", dest="weight_decay", type=float, default=None, help="Adam weight decay")
    g.add_argument("--max-iter", dest="max_iter", type=int, default=None, help="training iterations (0 .. max_iter-1)")
    g.add_argument("--interval", type=int, default=None, help="evaluate every this many iterations once past --warmup-iter")
    g.add_argument("--warmup-iter", dest="warmup_iter", type=int, default=None, help="no evaluation up to this iteration")
    g.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=500, help="also write last.pt (the --resume point) every this many iterations")
    g.add_argument("--eval-at-start", dest="eval_at_start", type=B, default=False, help="also evaluate the untrained model at iteration 0")

    g = p.add_argument_group("inference and proposals (docs/method.md §5)")
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

    g = p.add_argument_group("evaluation (docs/method.md §6)")
    g.add_argument("--protocol", choices=("thumos", "activitynet"), default=None, help="reported thresholds, averages and best-checkpoint criterion; a YAML file (e.g. a dataset description) may give its own as a mapping {reported, averages, criterion} (see eval/report.py)")
    g.add_argument("--tiou-thresholds", dest="tiou_thresholds", type=float, nargs="+", default=None, help="tIoU thresholds of detection mAP")
    g.add_argument("--save-raw", dest="save_raw", type=B, default=False, help="also write raw_predictions.npz (per-video CAS, attention A, A_V, A_F and what re-scoring needs) beside detections.json: test.py, and training's final evaluation in the run folder; re-score with python -m eval.rescore, plot with tools/visualize.py")
    g.add_argument("--raw-dtype", dest="raw_dtype", choices=("float32", "float16"), default="float32", help="precision of the arrays of raw_predictions.npz: float32 re-scores exactly, float16 halves the file and re-scores approximately")
    return p


def _load_yaml(path: str | Path, valid_keys: set[str], what: str = "config file", fix: str = "pass an existing YAML file to --config (see configs/)") -> dict[str, Any]:
    if not Path(path).is_file():
        raise PECRError(f"{what} {path} not found; {fix}")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise PECRError(f"{what} {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise PECRError(f"{what} {path} must hold a mapping of option names to values")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - valid_keys)
    if unknown:
        raise PECRError(f"{what} {path}: unknown option {unknown[0]!r}; option names are listed by `python main.py --help`")
    data.pop("config", None)
    return data


def shipped_path(path: str | os.PathLike) -> Path:
    """A relative path as given when it exists from the current directory, else inside the PECR
    checkout when it exists there (the files shipped in configs/), else as given."""
    given = Path(path)
    if given.exists() or given.is_absolute() or not (ROOT / given).exists():
        return given
    return ROOT / given


def shown(path: Path) -> str:
    """A path for messages: files of the checkout relative to it (configs/datasets/thumos.yaml)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT)) if Path(path).is_absolute() else str(path)
    except ValueError:
        return str(path)


def description_path(dataset: str) -> Path:
    """``--dataset`` value -> its description file: a name (configs/datasets/<name>.yaml) or a path."""
    if not isinstance(dataset, str) or not dataset:
        raise PECRError(f"dataset {dataset!r}: expected a dataset name ({', '.join(DATASETS)}) or the path of a description .yaml")
    if "/" not in dataset and "\\" not in dataset and not dataset.endswith((".yaml", ".yml", ".json")):
        path = DESCRIPTIONS / f"{dataset}.yaml"
        if not path.is_file():
            raise PECRError(f"--dataset {dataset}: no such dataset; use one of {', '.join(DATASETS)} "
                            f"(configs/datasets/<name>.yaml) or the path of a dataset description .yaml")
        return path
    return shipped_path(dataset)


def load_description(dataset: str, valid_keys: set[str]) -> dict[str, Any]:
    """The option values of a dataset description (see configs/datasets/thumos.yaml): every key of
    :data:`DATASET_KEYS` and :data:`PRESET_KEYS`, optionally any other option but ``dataset``."""
    path = description_path(dataset)
    values = _load_yaml(path, valid_keys, "dataset description",
                        f"pass --dataset {', '.join(DATASETS)} or the path of a description .yaml (copy configs/datasets/thumos.yaml)")
    for key in ("dataset", "resume"):
        if key in values:
            raise PECRError(f"dataset description {path}: {key!r} cannot be set in a description; remove it")
    missing = [k for k in DATASET_KEYS + PRESET_KEYS if k not in values]
    if missing:
        raise PECRError(f"dataset description {path} lacks {', '.join(missing)}; every description sets "
                        f"the data, protocol and training presets (copy them from configs/datasets/thumos.yaml)")
    return values


def is_description(values: dict[str, Any]) -> bool:
    """Whether an experiment file's values make a complete dataset description (and name no dataset)."""
    return "dataset" not in values and all(k in values for k in DATASET_KEYS + PRESET_KEYS)


def parse_args(argv: Sequence[str] | None = None, base: dict[str, Any] | None = None) -> argparse.Namespace:
    """Resolve the options: defaults < dataset description < ``base`` < YAML < command line, then
    check every value against :data:`RANGES` and :func:`check_consistency` (PECRError naming the option).

    The dataset (``--dataset``, else ``dataset`` in the YAML file or ``base``, else thumos) names a
    description (configs/datasets/<name>.yaml) or is its path. A YAML file given to ``--config``
    that sets no ``dataset`` but every key of a description is its own dataset description.
    ``base`` is a saved option dict (e.g. the one stored in a checkpoint, used by test.py); when it
    names the dataset and holds every key of a description, a missing description file is no error.
    """
    parser = build_parser()
    valid = {a.dest for a in parser._actions if a.dest != "help"}
    front = _front_parser(parser)
    first, _ = front.parse_known_args(argv)  # no --help yet: it must show the description's defaults
    yaml_values = _load_yaml(first.config, valid) if first.config else {}
    base = {k: v for k, v in (base or {}).items() if k in valid and k != "config"}
    explicit = first.dataset if _given_on_command_line(front, argv, "dataset") else None
    if explicit is None and first.config and is_description(yaml_values):
        explicit = first.config
    dataset = explicit or yaml_values.get("dataset") or base.get("dataset") or "thumos"
    try:
        description = load_description(dataset, valid)
    except PECRError:  # a saved run whose description is gone (moved, another machine) holds all it set
        from_base_only = explicit is None and "dataset" not in yaml_values and "dataset" in base
        if not (from_base_only and is_description({k: v for k, v in base.items() if k != "dataset"})):
            raise
        description = {}
    defaults = {**description, **base, **yaml_values, "dataset": dataset}
    parser.set_defaults(**defaults)
    opts = parser.parse_args(argv)
    given = _given_on_command_line(parser, argv)
    where = shown(description_path(dataset)) if description else None
    source = lambda key: (f"--{key.replace('_', '-')}" if key in given
                          else f"{key} in {first.config}" if key in yaml_values
                          else f"{key} in the checkpoint's options" if key in base
                          else f"{key} in {where}" if key in description else f"--{key.replace('_', '-')}")
    check_types(parser, opts, source)
    check_ranges(opts, source)
    check_consistency(opts, source)
    return opts


def origin(opts: argparse.Namespace, key: str) -> str:
    """For error messages: ``"<key> in <description file>"`` when the value of option ``key`` is the
    one its dataset description sets, else the command-line flag (``--key``)."""
    flag = f"--{key.replace('_', '-')}"
    try:
        path = description_path(opts.dataset)
        values = yaml.safe_load(path.read_text()) or {}
    except Exception:  # noqa: BLE001 -- no readable description: the flag is the way to change it
        return flag
    if isinstance(values, dict) and key in values and values[key] == getattr(opts, key, None):
        return f"{key} in {shown(path)} (or {flag})"
    return flag


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
    "feature_memory_gb": (0, None, CLOSED),
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
        if key == "protocol" and isinstance(value, dict):  # a protocol of its own (YAML files only)
            from eval.report import resolve_protocol

            resolve_protocol(value, source(key))
            continue
        value = _typed(value, kind, key, source)
        if action.choices is not None and value not in action.choices:
            raise PECRError(f"{source(key)}: {value!r} is not one of {', '.join(map(str, action.choices))}")
        setattr(opts, key, value)


def _typed(value, kind, key: str, source):
    if kind in (int, float) and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
        try:
            value = kind(value)
        except ValueError:
            pass
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


def check_consistency(opts: argparse.Namespace, source=lambda k: f"--{k.replace('_', '-')}") -> None:
    """Constraints between options (each message names them and the fix)."""
    if opts.feature_size % 4:
        raise PECRError(f"--feature-size {opts.feature_size} must be a multiple of 4 (RGB | flow halves, hidden width F/4)")
    if opts.batch_size < 2 * opts.num_similar:
        raise PECRError(f"--batch-size {opts.batch_size} cannot hold --num-similar {opts.num_similar} pairs of videos; "
                        f"use --batch-size >= {2 * opts.num_similar} or a smaller --num-similar")
    if opts.cas_s > opts.cas_e or opts.act_s > opts.act_e:
        raise PECRError(f"threshold ranges must run upwards: --cas-s {opts.cas_s:g} --cas-e {opts.cas_e:g}, "
                        f"--act-s {opts.act_s:g} --act-e {opts.act_e:g}")
    from eval.report import resolve_protocol

    protocol = resolve_protocol(opts.protocol, source("protocol"))
    needed = sorted({*protocol.reported, *(t for ts in protocol.averages.values() for t in ts)})
    missing = [t for t in needed if not any(abs(t - x) < 1e-9 for x in opts.tiou_thresholds)]
    if missing:
        raise PECRError(f"{source('tiou_thresholds')} {' '.join(f'{t:g}' for t in opts.tiou_thresholds)} lacks {', '.join(f'{t:g}' for t in missing)}, "
                        f"which the {protocol.name} protocol reports ({source('protocol')}); add them")


def _given_on_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None, dest: str | None = None):
    """Whether option ``dest`` was given on the command line; without ``dest``, the set of those given."""
    sentinel = object()
    dests = [dest] if dest else [a.dest for a in parser._actions if a.dest != "help"]
    probe = argparse.Namespace(**{d: sentinel for d in dests})
    parser.parse_known_args(argv, namespace=probe)
    given = {d for d in dests if getattr(probe, d) is not sentinel}
    return dest in given if dest else given


def changed_run_options(opts: argparse.Namespace, saved: dict[str, Any]) -> list[str]:
    """The options (sorted) whose value in ``opts`` differs from a run's saved option dict, session
    options (:data:`SESSION_OPTIONS`) left out: what a resume of that run may not change."""
    now = options_to_dict(opts)
    return [k for k in sorted(set(now) | set(saved)) if k not in SESSION_OPTIONS and now.get(k) != saved.get(k)]


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
