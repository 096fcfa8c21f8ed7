"""Option precedence (defaults < preset < YAML < command line) and the YAML round trip."""
import pytest
import yaml

import options
from utils.errors import PECRError


def test_thumos_defaults_match_spec():
    o = options.parse_args([])
    assert o.dataset == "thumos"
    assert (o.lr, o.weight_decay, o.max_iter, o.interval, o.warmup_iter) == (5e-5, 1e-3, 9001, 50, 3000)
    assert (o.batch_size, o.num_similar, o.max_seqlen, o.seed) == (10, 3, 320, 3552)
    assert (o.alpha0, o.alpha1, o.alpha2, o.alpha3, o.alpha4, o.alpha5, o.alpha6, o.alpha7) == (
        0.8, 0.8, 0.8, 1.0, 200.0, 0.005, 0.001, 0.5)
    assert (o.k_easy, o.k_hard, o.mining_M, o.mining_m, o.train_topk, o.test_topk) == (20, 5, 3, 24, 7, 20)
    assert (o.num_prob_v, o.train_temperature, o.test_temperature) == (20, 8.0, 0.03)
    assert o.tiou_thresholds == pytest.approx([0.1 * i for i in range(1, 10)])
    assert o.hard_mining == "reference" and o.metric == "kl" and o.cls_topk == "release"


def test_activitynet_preset():
    o = options.parse_args(["--dataset", "activitynet"])
    assert (o.lr, o.weight_decay, o.max_iter, o.interval, o.warmup_iter) == (3e-5, 5e-5, 22001, 1000, 10000)
    assert (o.max_seqlen, o.train_topk, o.k_easy, o.k_hard, o.mining_m) == (60, 5, 3, 3, 12)
    assert (o.train_subset, o.test_subset, o.protocol, o.ambiguous_file) == ("training", "validation", "activitynet", None)
    assert o.tiou_thresholds == pytest.approx([0.5 + 0.05 * i for i in range(10)])


def test_precedence(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": "activitynet", "lr": 1e-3, "k_easy": 7}))
    o = options.parse_args(["--config", str(cfg)])
    assert o.dataset == "activitynet" and o.lr == 1e-3 and o.k_easy == 7
    assert o.max_seqlen == 60  # preset still applies below the YAML
    o = options.parse_args(["--config", str(cfg), "--lr", "2e-3", "--dataset", "thumos"])
    assert o.dataset == "thumos" and o.lr == 2e-3 and o.k_easy == 7
    assert o.max_seqlen == 320  # command-line dataset chooses the preset


def test_yaml_round_trip(tmp_path):
    o = options.parse_args(["--dataset", "synthetic", "--metric", "bhattacharyya", "--ambiguous-file", "none",
                            "--tiou-thresholds", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"])
    options.save_options(o, tmp_path / "options.yaml")
    back = options.load_options(tmp_path / "options.yaml")
    assert vars(back) == {**vars(o), "config": str(tmp_path / "options.yaml")}


def test_unknown_yaml_key_is_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("lr: 0.1\nlearning_rat: 3\n")
    with pytest.raises(PECRError, match="learning_rat"):
        options.parse_args(["--config", str(cfg)])


def test_missing_config_file(tmp_path):
    with pytest.raises(PECRError, match="not found"):
        options.parse_args(["--config", str(tmp_path / "nope.yaml")])


def test_every_option_has_help():
    parser = options.build_parser()
    for action in parser._actions:
        assert action.help, action.dest


@pytest.mark.parametrize("name", ["thumos", "activitynet", "synthetic", "synthetic_thumos"])
def test_shipped_configs_parse(name):
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    options.parse_args(["--config", str(path)])


def test_saved_options_as_base_rank_below_yaml_and_command_line(tmp_path):
    saved = options.options_to_dict(options.parse_args(["--dataset", "activitynet", "--k-easy", "9", "--lr", "0.5"]))
    o = options.parse_args([], base=saved)
    assert o.dataset == "activitynet" and o.k_easy == 9 and o.lr == 0.5 and o.max_seqlen == 60
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("k_easy: 4\n")
    o = options.parse_args(["--config", str(cfg), "--lr", "0.25"], base=saved)
    assert (o.k_easy, o.lr, o.dataset) == (4, 0.25, "activitynet")


@pytest.mark.parametrize("name", ["thumos", "activitynet", "synthetic"])
def test_shipped_config_equals_its_preset(name):
    """configs/<dataset>.yaml spells out the preset: both resolve to the same options."""
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    from_file = vars(options.parse_args(["--config", str(path)]))
    from_preset = vars(options.parse_args(["--dataset", name]))
    assert {**from_file, "config": None} == {**from_preset, "config": None}


# ----------------------------------------------------------------------------- validation at parse time

BAD_COMMAND_LINES = [
    (["--lr", "-0.001"], "--lr"), (["--weight-decay", "-1"], "--weight-decay"), (["--dropout", "1.5"], "--dropout"),
    (["--max-seqlen", "0"], "--max-seqlen"), (["--max-seqlen", "1"], "--max-seqlen"), (["--interval", "0"], "--interval"),
    (["--checkpoint-every", "0"], "--checkpoint-every"), (["--train-topk", "0"], "--train-topk"),
    (["--test-topk", "0"], "--test-topk"), (["--mining-m", "0"], "--mining-m"), (["--seed", "-1"], "--seed"),
    (["--cas-num", "0"], "--cas-num"), (["--act-num", "0"], "--act-num"), (["--tiou-thresholds", "0.5"], "--tiou-thresholds"),
    (["--nms-sigma", "0"], "--nms-sigma"), (["--max-iter", "0"], "--max-iter"), (["--k-easy", "0"], "--k-easy"),
    (["--var-eps", "0"], "--var-eps"), (["--batch-size", "0"], "--batch-size"), (["--feature-size", "0"], "--feature-size"),
    (["--feature-size", "10"], "--feature-size"), (["--synthetic-videos", "0"], "--synthetic-videos"),
    (["--synthetic-classes", "0"], "--synthetic-classes"), (["--synthetic-difficulty", "5"], "--synthetic-difficulty"),
    (["--batch-size", "4"], "--num-similar"), (["--cas-s", "0.9", "--cas-e", "0.1"], "--cas-s"),
    (["--tiou-thresholds", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "1.5"], "--tiou-thresholds"),
]


@pytest.mark.parametrize("argv, name", BAD_COMMAND_LINES, ids=[" ".join(a) for a, _ in BAD_COMMAND_LINES])
def test_bad_values_are_refused_at_parse_time_naming_the_option(argv, name):
    with pytest.raises(PECRError, match=name) as err:
        options.parse_args(argv)
    assert "\n" not in str(err.value)


BAD_YAML = [("max_iter: 3.7", "integer"), ("batch_size: 2.5", "integer"), ("tiou_thresholds: 0.5", "list"),
            ("seed: null", "integer"), ("lr: [0.1]", "number"), ("metric: cosine", "kl"),
            ("deterministic: 1", "true or false"), ("feature_file: null", "text"), ("lr: .nan", "finite")]


@pytest.mark.parametrize("text, words", BAD_YAML, ids=[t for t, _ in BAD_YAML])
def test_bad_yaml_values_name_the_file_and_key(tmp_path, text, words):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(text + "\n")
    with pytest.raises(PECRError, match=words) as err:
        options.parse_args(["--config", str(cfg)])
    key = text.split(":")[0]
    assert key in str(err.value) and str(cfg) in str(err.value)


def test_yaml_numbers_convert_and_nulls_of_optional_paths_stay_none(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("lr: 1\nweight_decay: 5e-5\nambiguous_file: null\ntiou_thresholds: [1e-1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]\n")
    o = options.parse_args(["--config", str(cfg)])  # an int for a float; YAML 1.1 reads 5e-5 and 1e-1 as text
    assert (o.lr, o.weight_decay, o.ambiguous_file) == (1.0, 5e-5, None) and isinstance(o.lr, float)
    assert o.tiou_thresholds[0] == 0.1
    o.max_iter = "12"  # numeric text converts in check_types too (sweep grids, saved option dicts)
    options.check_types(options.build_parser(), o)
    assert o.max_iter == 12


def test_every_numeric_option_has_a_range():
    """New numeric options must be added to options.RANGES (one table of constraints)."""
    numeric = {a.dest for a in options.build_parser()._actions if a.type in (int, float)}
    assert numeric == set(options.RANGES), numeric ^ set(options.RANGES)


@pytest.mark.parametrize("value, low, high, bounds, inside", [
    (0, 0, None, "[]", True), (0, 0, None, "()", False), (1, 0, 1, "[)", False), (1, 0, 1, "(]", True),
    (-1e-9, 0, None, "[]", False), (5, None, 4, "[]", False)])
def test_in_range(value, low, high, bounds, inside):
    assert options.in_range(value, low, high, bounds) == inside


def test_help_shows_the_presets_defaults(capsys):
    with pytest.raises(SystemExit):
        options.parse_args(["--dataset", "synthetic", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.001)" in out and "(default: 1001)" in out  # synthetic lr and max_iter, not THUMOS14's


def test_dataset_descriptions_are_the_single_source_of_dataset_values():
    """The parser leaves the data, protocol and training presets unset: only descriptions give them."""
    parser = options.build_parser()
    assert all(parser.get_default(k) is None for k in options.DATASET_KEYS + options.PRESET_KEYS)
    for name in options.DATASETS:
        values = options.load_description(name, {a.dest for a in parser._actions})
        resolved = vars(options.parse_args(["--dataset", name]))
        assert {k: resolved[k] for k in values} == values
