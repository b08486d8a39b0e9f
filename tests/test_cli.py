"""experiments/train.py as a user meets it: flagfile lookup and errors on bad input."""

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, small_domain

TRAIN = REPO / "experiments" / "train.py"


def _train(args, cwd):
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_bad_poscar_reports_file_and_line(tmp_path):
    ah, bh = small_domain(tmp_path, "PdH", 2), small_domain(tmp_path, "NiH", 2)
    broken = sorted(ah.iterdir())[0]
    lines = broken.read_text().splitlines()
    lines[6] = lines[6] + " 7"  # one more count than there are symbols
    broken.write_text("\n".join(lines) + "\n")
    proc = _train(["--flagfile=pdni_paper.flags", f"--data_ah={ah}", f"--data_bh={bh}",
                   f"--output_dir={tmp_path / 'out'}"], cwd=REPO)
    assert proc.returncode == 2
    assert f"{broken}, line 7: 2 element symbols but 3 atom counts" in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_wrong_metal_and_unknown_flagfile_from_experiments_dir(tmp_path):
    ah, bh = small_domain(tmp_path, "PdH", 2), small_domain(tmp_path, "NiH", 2)
    # run from experiments/: the flagfile is found there, the folders hold the wrong metal
    proc = _train(["--flagfile=pdni_paper.flags", f"--data_ah={bh}", f"--data_bh={ah}",
                   f"--output_dir={tmp_path / 'out'}"], cwd=REPO / "experiments")
    assert proc.returncode == 2
    assert "holds Ni; this domain takes only Pd and H" in proc.stderr
    assert str(sorted(bh.iterdir())[0]) in proc.stderr
    proc = _train(["--flagfile=pdni_paper.flags", "--constrained=AX"], cwd=tmp_path)
    assert proc.returncode != 0 and "'X' is not one of" in proc.stderr


def test_bad_hyperparameters_are_refused(tmp_path):
    for args, message in ((["--d1=3.5"], "need 0 < d1 < d2"), (["--epochs=0"], "epochs must be"),
                          (["--method=crystalgan_plus", "--composition_sampling",
                            "--target_compositions=20:1:1"], "asks for 20 H atoms, the layout "
                           "has 12 rows for H; pass --n_h=20")):
        proc = _train(["--flagfile=pdni_paper.flags", f"--output_dir={tmp_path}", *args], cwd=REPO)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-500:]


_WATCH_IMPORTS = """
import gc, importlib.abc, runpy, sys
seen = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("jax", "pymatgen") and name not in seen:
            seen[name] = gc.get_threshold()
        return None
sys.meta_path.insert(0, Watch())
runpy.run_path(sys.argv[1], run_name="imported")
print(seen)
"""


@pytest.mark.parametrize("script", ["train.py", "table2.py", "ablation.py"])
def test_entry_points_collect_less_from_before_their_heavy_imports(script):
    from crystalgan_jax.pipeline import startup

    done = subprocess.run([sys.executable, "-c", _WATCH_IMPORTS,
                           str(REPO / "experiments" / script)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    assert seen == {"jax": startup.GC_THRESHOLDS, "pymatgen": startup.GC_THRESHOLDS}
    assert startup.GC_THRESHOLDS != (700, 10, 10)  # Python's defaults
