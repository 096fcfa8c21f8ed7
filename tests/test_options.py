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
                            "--tiou-thresholds", "0.3", "0.5"])
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
