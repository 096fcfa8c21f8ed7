"""Split an object-array I3D feature file into a folder of per-video files (for lazy loading).

    python tools/split_features.py --features features/ActivityNet1.2/ActivityNet1.2-I3D-JOINTFeatures.npy \
        --annotations features/ActivityNet1.2-Annotations --out features/ActivityNet1.2/I3D
    python main.py --dataset activitynet --feature-file features/ActivityNet1.2/I3D [--feature-loading lazy]

Row i of the object array is video i of ``<annotations>/videoname.npy``; it is written as
float32 to ``<out>/<video>.npy``. Each file is written atomically; existing files are kept
unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import cli  # noqa: E402
from utils.progress import progress as progress_bar  # noqa: E402
from utils.io import atomic_save  # noqa: E402


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/split_features.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--features", required=True, help="object .npy array of per-video (T_i x F) features")
    p.add_argument("--annotations", required=True, help="W-TALC annotation folder (videoname.npy gives the names)")
    p.add_argument("--out", required=True, help="folder receiving <video>.npy")
    p.add_argument("--overwrite", action="store_true", help="rewrite existing files")
    args = p.parse_args(argv)
    from dataset import load_annotations, read_feature_file

    names = load_annotations(args.annotations, "--annotations")["video_names"]
    videos = read_feature_file(Path(args.features), len(names), Path(args.annotations) / "videoname.npy", "--features")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, x in zip(progress_bar(names, desc="writing", unit="video"), videos):
        path = out / f"{name}.npy"
        if path.exists() and not args.overwrite:
            continue
        array = np.asarray(x, dtype=np.float32)
        atomic_save(path, lambda f: np.save(f, array))
        written += 1
    print(f"wrote {written} of {len(names)} files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
