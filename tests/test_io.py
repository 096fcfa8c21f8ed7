"""utils.io: atomic writes keep the user's file mode; writability checks; utils.progress in logs."""
import os
import stat
import subprocess
import sys

import pytest

from utils.errors import PECRError
from utils.io import atomic_save, atomic_write_text, check_writable


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_of_any_new_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_save(tmp_path / "b.bin", lambda f: f.write(b"y"))
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("z")
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert want == 0o666 & ~umask
    for name in ("a.txt", "b.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == want, name


def test_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "f.txt", "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_save(tmp_path / "f.txt", fail)
    assert (tmp_path / "f.txt").read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "folder", "--out")
    assert (tmp_path / "new" / "folder").is_dir() and not os.listdir(tmp_path / "new" / "folder")
    (tmp_path / "file").write_text("")
    with pytest.raises(PECRError, match=r"cannot write to .*file.*--out"):
        check_writable(tmp_path / "file" / "sub", "--out")


def test_progress_prints_lines_not_redraws_when_redirected():
    code = ("import time\nfrom utils.progress import progress\n"
            "for _ in progress(range(4), desc='work', log_every_s=0.01): time.sleep(0.02)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "\r" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) >= 2 and all(line.startswith("work:") for line in lines) and "4/4" in lines[-1]
