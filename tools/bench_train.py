"""Training-step benchmark: ``python tools/bench.py train [--steps N] [PECR options]``.

Default configuration = THUMOS14 (batch 10, T 320, K 20, 2048-d I3D features, 20 classes) with an
RN50-sized CLIP text tower with random weights (``--clip-backbone random-RN50``) on the CPU.
Seconds per training step split into data (random-perturbation resampling of an in-memory feature
bank, as ``WTALDataset.train_batch`` does), forward, loss, backward and optimizer (Adam), and beside
it the irreducible part alone: forward + backward of the CO2-Net convolutions and the adapter's
linear layers at the same shapes. ``overhead_fraction`` = 1 - irreducible / step is everything
else (text encoder, element-wise ops, sampling, CAS, mining, losses, data, optimizer); the target
is < 0.25, with peak memory (process max RSS) < 2 GB. Prints one JSON line.

``--amp bf16`` compares mixed precision with float32 in the same run, on the same model and data:
each round times one float32 step (and its components) and one bf16 step (``bf16_*`` keys), and
``bf16_step_ratio`` is the median over rounds of bf16 / float32 step time, so both see the same
load; target <= 0.6 on a CPU with AVX512-BF16. Memory: after the timed rounds, one more step of
each precision after glibc's ``malloc_trim`` (the freed memory of earlier steps goes back to the
OS, so neither step's peak reads memory the other left in the heap): ``step_memory_mb`` = peak RSS
during the step minus RSS before it, per precision (``train_peak_rss_mb`` stays the float32 steps'
peak, which then also holds what the bf16 steps left in the heap).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

THUMOS_PHRASES = ["baseball pitch", "basketball dunk", "billiards", "clean and jerk", "cliff diving",
                  "cricket bowling", "cricket shot", "diving", "frisbee catch", "golf swing", "hammer throw",
                  "high jump", "javelin throw", "long jump", "pole vault", "shot put", "soccer penalty",
                  "tennis swing", "throw discus", "volleyball spiking"]


def rss_mb(field: str = "VmHWM") -> float:
    """Resident memory from /proc (VmHWM = peak since start or since :func:`reset_peak`), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> bool:
    """glibc only: serve every allocation >= nbytes by mmap so freed activations go back to the OS.

    glibc's default *dynamic* threshold rises to the size of the first freed large block (~25 MB
    tensors here), after which activations come from the heap, are never returned, and the RSS grows
    ~0.9 GB over the first steps without any more live memory.
    """
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, nbytes))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def trim_heap() -> bool:
    """glibc only: give the free memory of the heap back to the OS (malloc_trim), so the RSS is the live memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def reset_peak() -> bool:
    """Restart the VmHWM peak at the current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Timer:
    """Wall and process-CPU seconds of each repeat of each named part."""

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu = device, {}, {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        w, c = time.perf_counter(), time.process_time()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.wall.setdefault(name, []).append(time.perf_counter() - w)
        self.cpu.setdefault(name, []).append(time.process_time() - c)


class FeatureBank:
    """In-memory stand-in for WTALDataset's stacked features: videos of random length, batches by
    random perturbation (docs/method.md §1.3) through ``dataset.random_perturb``."""

    def __init__(self, feature_size, clip_dim, num_classes, videos=8, seed=0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(320, 960, videos)
        self.offsets = np.cumsum(self.lengths) - self.lengths
        rows = int(self.lengths.sum())
        self.features = rng.standard_normal((rows, feature_size), dtype=np.float32)
        self.clip = rng.standard_normal((rows, clip_dim), dtype=np.float32)
        self.labels = np.zeros((videos, num_classes), np.float32)
        self.labels[np.arange(videos), np.arange(videos) // 2 % num_classes] = 1

    def batch(self, rng, batch_size, seqlen, device):
        from dataset import random_perturb

        idx = np.concatenate([np.arange(6), rng.integers(6, len(self.lengths), batch_size - 6)])
        rows = self.offsets[idx, None] + random_perturb(rng, self.lengths[idx], seqlen)
        put = lambda a: torch.from_numpy(a).to(device)
        return put(self.features[rows]), put(self.clip[rows]), put(self.labels[idx])


def head_step(model, features: torch.Tensor) -> None:
    """Forward + backward of the PECR head alone (consensus modules, fusion, adapter, with every
    element-wise op and dropout), without text encoder, sampling, CAS or losses."""
    att_v, att_f, _, _, mu, var = model.head(features)
    (mu.sum() + var.sum() + att_v.sum() + att_f.sum()).backward()


def in_precision(model, amp: str, fn):
    """``fn(features)`` for a head component at the model's ``amp`` precision: the features cast and
    autocast on, as PECR.forward does (float32: called as is)."""
    from model import AMP_DTYPES

    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return fn
    device_type = model.fusion1.weight.device.type

    def run(features):
        with torch.autocast(device_type, dtype=dtype):
            return fn(features.to(dtype))
    return run


def irreducible_step(model, features: torch.Tensor) -> None:
    """Forward + backward of the convolutions and adapter linears only (no element-wise ops)."""
    x = features.transpose(1, 2)
    S = model.feature_size // 2
    conv = lambda layer, z: F.conv1d(z, layer.weight, layer.bias, padding=layer.padding)
    outs, filtered = [], []
    for m, (main, aux) in ((model.consensus_v, (x[:, :S], x[:, S:])), (model.consensus_f, (x[:, S:], x[:, :S]))):
        e = conv(m.encoder, aux)
        g = conv(m.global_conv, main.mean(-1, keepdim=True))
        xf = main * conv(m.local_conv, e)  # one product stands for the consensus gating: same graph shape
        h = conv(m.attn_conv3, conv(m.attn_conv2, conv(m.attn_conv1, xf)))
        outs += [g.sum(), h.sum()]
        filtered.append(xf)
    f0 = F.conv1d(torch.cat(filtered, 1), model.fusion1.weight, model.fusion1.bias, padding=1)
    f1 = F.conv1d(f0, model.fusion2.weight, model.fusion2.bias, padding=1).transpose(1, 2)
    outs += [F.linear(f1, model.adapter.fc_mean.weight, model.adapter.fc_mean.bias).sum(),
             F.linear(f1, model.adapter.fc_var.weight, model.adapter.fc_var.bias).sum()]
    sum(outs).backward()


def main(argv: list[str] | None = None) -> None:
    from losses import PECRLoss
    from model import build_model
    from options import parse_args
    from utils.device import resolve_device

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    flag = lambda v: v.lower() in ("1", "true", "yes", "on")
    p.add_argument("--steps", type=int, default=4, help="timed rounds (after one warm-up round)")
    p.add_argument("--adam", choices=("fused", "foreach"), default="fused",
                   help="Adam implementation (fused is ~10x faster on CPU, same update)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--mmap-threshold", type=flag, default=False, help="fix glibc's mmap threshold (see fixed_mmap_threshold)")
    args, rest = p.parse_known_args(argv)
    mmap_fixed = fixed_mmap_threshold() if args.mmap_threshold else False
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = parse_args(["--clip-backbone", "random-RN50", "--device", "cpu", *rest])
    if not opts.clip_vocab and not os.environ.get("PECR_CLIP_VOCAB"):
        shared = ROOT.parent / "shared" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
        opts.clip_vocab = str(shared) if shared.is_file() else None
    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)

    model = build_model(opts, THUMOS_PHRASES, device).train()
    criterion = PECRLoss(opts)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=opts.lr, weight_decay=opts.weight_decay,
                                 **({"fused": True} if args.adam == "fused" else {"foreach": True}))
    bank = FeatureBank(opts.feature_size, model.clip_dim, model.num_classes)
    rng = np.random.default_rng(opts.seed)
    timer = Timer(device)
    B, T = opts.batch_size, opts.max_seqlen
    setup_mb = rss_mb("VmRSS")
    peak_reset = reset_peak()
    # float32 first (its figures keep the plain names), then the --amp precision (keys prefixed "bf16_")
    precisions = {"off": ""} if opts.amp == "off" else {"off": "", opts.amp: f"{opts.amp}_"}

    def train_step(prefix=""):
        with timer(prefix + "data"):
            feats, clip_feats, labels = bank.batch(rng, B, T, device)
        with timer(prefix + "forward"):
            out = model(feats)
        with timer(prefix + "loss"):
            total, _ = criterion(out, labels, clip_feats)
        with timer(prefix + "backward"):
            total.backward()
        with timer(prefix + "optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return feats

    def components(amp):
        return {"text_encoder": lambda: model.encode_text().sum().backward(),
                "head": lambda: in_precision(model, amp, lambda x: head_step(model, x))(feats),
                "irreducible": lambda: in_precision(model, amp, lambda x: irreducible_step(model, x))(feats)}

    for amp, prefix in precisions.items():  # warm-up: allocators, kernels, optimizer state
        model.amp = amp
        feats = train_step(prefix)
        if amp == "off":
            train_peak_mb = rss_mb("VmHWM")  # peaks are taken over float32 training steps only
        for fn in components(amp).values():
            fn()
            optimizer.zero_grad(set_to_none=True)
    parts = ("data", "forward", "loss", "backward", "optimizer")
    # Interleaved rounds: one training step, then each component alone (per precision), so that every
    # ratio compares runs made under the same load (the CPU may be shared); figures are medians over rounds.
    for _ in range(args.steps):
        for amp, prefix in precisions.items():
            model.amp = amp
            reset_peak()
            feats = train_step(prefix)
            if amp == "off":
                train_peak_mb = max(train_peak_mb, rss_mb("VmHWM"))
            for name, fn in components(amp).items():
                with timer(prefix + name):
                    fn()
                optimizer.zero_grad(set_to_none=True)

    med = lambda xs: round(statistics.median(xs), 4)
    result = {"bench": "train", "device": str(device), "threads": torch.get_num_threads(),
              "load_avg_1min": round(os.getloadavg()[0], 2), "batch": B, "T": T, "K": opts.num_prob_v,
              "feature_size": opts.feature_size, "clip": opts.clip_backbone, "classes": model.num_classes,
              "adam": args.adam, "steps": args.steps, "amp": opts.amp}
    rounds = range(1, args.steps + 1)  # index 0 of the training parts is the warm-up step (components: untimed)
    for tag, table in (("", timer.wall), ("cpu_", timer.cpu)):
        steps = {}
        for amp, prefix in precisions.items():
            steps[amp] = [sum(table[prefix + k][i] for k in parts) for i in rounds]
            name = lambda key: f"{prefix}{tag}{key}"
            result[name("step_s")] = med(steps[amp])
            result.update({name(f"{k}_s"): med(table[prefix + k][1:]) for k in parts})
            result.update({name(f"{k}_fwd_bwd_s"): med(table[prefix + k]) for k in components(amp)})
            # everything but the convolutions and adapter linears: text encoder, element-wise ops and
            # dropout, sampling, CAS, mining, losses, data, optimizer
            result[name("overhead_fraction")] = med([1 - table[prefix + "irreducible"][i - 1] / s
                                                     for i, s in zip(rounds, steps[amp])])
            # everything outside the CO2-Net head + adapter: text encoder, sampling, CAS, mining, losses,
            # data, optimizer
            result[name("outside_head_fraction")] = med([1 - table[prefix + "head"][i - 1] / s
                                                         for i, s in zip(rounds, steps[amp])])
        if opts.amp != "off":  # paired within each round: both precisions ran under the same load
            result[f"{opts.amp}_{tag}step_ratio"] = med([a / b for a, b in zip(steps[opts.amp], steps["off"])])
    bank_mb = (bank.features.nbytes + bank.clip.nbytes) / 2**20
    result.update({"setup_rss_mb": round(setup_mb, 1), "train_peak_rss_mb": round(train_peak_mb, 1),
                   "train_peak_rss_mb_without_data": round(train_peak_mb - bank_mb, 1),
                   "peak_is_training_only": peak_reset, "fixed_mmap_threshold": mmap_fixed,
                   "feature_bank_mb": round(bank_mb, 1),
                   "trainable_params": sum(p.numel() for p in trainable)})
    if opts.amp != "off":
        memory, trimmed = {}, True
        for amp, prefix in precisions.items():
            model.amp = amp
            gc.collect()
            trimmed = trim_heap() and trimmed
            before = rss_mb("VmRSS")
            reset_peak()
            train_step(prefix)
            memory[amp] = round(rss_mb("VmHWM") - before, 1)
        result["step_memory_mb"], result["step_memory_heap_trimmed"] = memory, trimmed
        result[f"{opts.amp}_memory_ratio"] = round(memory[opts.amp] / memory["off"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
