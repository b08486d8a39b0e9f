"""Bad input is refused before training with one error naming file, line or row, and flag.

Covers the input defects of issue #11: non-finite numbers, counts lines that disagree with
the coordinate lines, overlapping atoms, duplicates (warned), malformed and crashing .mat
files, oversized structures, wrong elements and out-of-range hyperparameters; and a
property-based test that every reader raises only StructureFileError on damaged input.
"""

import dataclasses
import random
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials import io, mat_files
from crystalgan_jax.core import losses
from crystalgan_jax import train
from crystalgan_jax.pipeline.spec import MAX_BLOCK_ROWS, MAX_SEED, RunSpec
from crystalgan_jax.pipeline.prepare import check_sizes
from tests.conftest import SHARED

BAD_MAT = SHARED / "bad-inputs"

# Pd4H4 rock salt, a = 4.0 A: 8 coordinate lines after "Direct" (line 8).
ROCKSALT = """Pd4H4
1.0
4.0 0.0 0.0
0.0 4.0 0.0
0.0 0.0 4.0
Pd H
4 4
Direct
0.0 0.0 0.0
0.0 0.5 0.5
0.5 0.0 0.5
0.5 0.5 0.0
0.5 0.5 0.5
0.5 0.0 0.0
0.0 0.5 0.0
0.0 0.0 0.5
"""


def _lines(text, number, new):
    lines = text.splitlines()
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, pattern", [
    (_lines(ROCKSALT, 9, "nan 0.0 0.0"), r"line 9: non-finite number in the coordinates of atom 1"),
    (_lines(ROCKSALT, 4, "0.0 inf 0.0"), r"line 4: non-finite number in the lattice vector b"),
    (_lines(ROCKSALT, 2, "NaN"), r"line 2: non-finite number in the scale factor"),
    (_lines(ROCKSALT, 7, "4 3"), r"line 16: the counts line says 7 atoms but 8 coordinate lines"),
    (_lines(ROCKSALT, 7, "-1 4"), r"line 7: atom counts must be >= 0"),
    (_lines(ROCKSALT, 16, "0.0 0.0 0.0"), r"atoms 1 \(Pd\) and 8 \(H\) are 0 A apart"),
    (_lines(ROCKSALT, 16, "0.99 0.99 0.02"),  # 4 x |(-0.01, -0.01, 0.02)| across the cell edge
     r"atoms 1 \(Pd\) and 8 \(H\) are 0.098 A apart"),
])
def test_bad_poscar_is_refused_naming_file_and_line(tmp_path, text, pattern):
    path = tmp_path / "x.vasp"
    path.write_text(text)
    with pytest.raises(io.StructureFileError, match=pattern) as err:
        io.read_folder(tmp_path, "Pd")
    assert str(err.value).startswith(str(path))


def test_counts_and_coordinates_that_agree_and_velocities_after_a_blank_line_pass(tmp_path):
    (tmp_path / "x.vasp").write_text(ROCKSALT + "\n0.1 0.0 0.0\n" * 8)
    assert len(io.read_folder(tmp_path, "Pd").structures[0]) == 8


def test_non_finite_cif_is_refused(tmp_path):
    s = Structure(Lattice.cubic(4.0), ["Pd", "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    io.write_cif(s, tmp_path / "x.cif")
    text = (tmp_path / "x.cif").read_text()
    (tmp_path / "x.cif").write_text(re.sub(r"(_cell_length_b\s+)\S+", r"\1nan", text))
    with pytest.raises(io.StructureFileError, match=r"x.cif: (malformed CIF|the lattice holds)"):
        io.read_folder(tmp_path, "Pd")


def test_atom_overlapping_its_own_image_is_refused(tmp_path):
    (tmp_path / "x.vasp").write_text(
        "thin\n1.0\n4 0 0\n0 4 0\n0 0 0.3\nPd H\n1 1\nDirect\n0 0 0\n0.5 0.5 0.5\n")
    with pytest.raises(io.StructureFileError, match=r"x.vasp: .*(apart|planes)"):
        io.read_folder(tmp_path, "Pd")


def test_duplicate_inputs_are_warned_and_kept(tmp_path):
    (tmp_path / "a.vasp").write_text(ROCKSALT)
    # the same structure with its atoms in another order and coordinates shifted by 1
    lines = ROCKSALT.splitlines()
    shuffled = lines[:8] + ["1.0 0.0 0.0"] + lines[9:12][::-1] + lines[12:]
    (tmp_path / "b.vasp").write_text("\n".join(shuffled) + "\n")
    (tmp_path / "c.vasp").write_text(_lines(ROCKSALT, 16, "0.0 0.0 0.55"))
    with pytest.warns(io.DuplicateStructureWarning, match=r"1 duplicate .*b.vasp repeats .*a.vasp"):
        domain = io.read_folder(tmp_path, "Pd")
    assert len(domain) == 3


# --- the authors' .mat format ----------------------------------------------------------

BAD_MAT_CASES = {
    "h_2cols.mat": r"h_2cols.mat\[0\]: column 2 \(H block\) must be n x 3 .*shape \(1, 2\)",
    "h_string.mat": r"h_string.mat\[0\]: column 2 \(H block\) holds a string",
    "h_struct.mat": r"h_struct.mat\[0\]: column 2 \(H block\) holds a MATLAB struct",
    "zero_rows.mat": r"zero_rows.mat: variable 'd' holds no structures \(0 rows\)",
    "h_nan.mat": r"h_nan.mat\[0\]: column 2 \(H block\) row 1 holds a non-finite number",
    "lattice_nan.mat": r"lattice_nan.mat\[0\]: column 1 \(lattice\) row 1 holds a non-finite",
    "lattice_inf.mat": r"lattice_inf.mat\[0\]: column 1 \(lattice\) row 1 holds a non-finite",
    "placeholder_wrongshape.mat":
        r"placeholder_wrongshape.mat\[0\]: column 4 \(placeholder .*\) must be 18 x 3 zeros",
    "segv_flipped.mat": r"segv_flipped.mat: not a readable MATLAB .mat file: the reader "
                        r"crashed \(SIGSEGV\)",
}


def test_every_bad_mat_file_has_a_case():
    if not BAD_MAT.exists():
        pytest.skip(f"{BAD_MAT} not found")
    assert {p.name for p in BAD_MAT.glob("*.mat")} == set(BAD_MAT_CASES)


@pytest.mark.parametrize("name", sorted(BAD_MAT_CASES))
def test_bad_mat_gives_one_clear_error(name):
    path = BAD_MAT / name
    if not path.exists():
        pytest.skip(f"{path} not found (expected ../shared/data beside the repo)")
    with pytest.raises(io.StructureFileError, match=BAD_MAT_CASES[name]) as err:
        io.read_domain(path, "Pd", mat_block=2)
    assert "\n" not in str(err.value)


def test_reference_mat_duplicate_is_warned(reference_dir):
    with pytest.warns(io.DuplicateStructureWarning, match=r"NiH_dataset.mat\[34\] repeats "
                      r".*NiH_dataset.mat\[32\]"):
        io.read_domain(reference_dir / "NiH_dataset.mat", "Ni", mat_block=3)


# --- flags and sizes, in the library dataclasses --------------------------------------

@pytest.mark.parametrize("changes, pattern", [
    (dict(learning_rate=float("nan")), "learning_rate must be finite and > 0"),
    (dict(learning_rate=0.0), "learning_rate must be finite and > 0"),
    (dict(learning_rate=float("inf")), "learning_rate must be finite and > 0"),
    (dict(beta1=1.0), r"beta1 must be in \[0, 1\)"),
    (dict(beta2=-0.1), r"beta2 must be in \[0, 1\)"),
    (dict(weights=losses.Weights(occupancy=float("nan"))), "occupancy_weight must be finite"),
    (dict(weights=losses.Weights(l5=-1.0)), "l5 must be finite and >= 0"),
    (dict(weights=losses.Weights(l7=float("inf"))), "l7 must be finite and >= 0"),
    (dict(d2=float("inf")), "need 0 < d1 < d2"),
    (dict(d1=float("nan")), "need 0 < d1 < d2"),
    (dict(classes=()), "must name at least one class"),
    (dict(classes=((),)), "must name at least one class"),
    (dict(classes=((3,),)), "take blocks 0"),
    (dict(clash_factor=float("nan")), "clash_factor must be finite"),
])
def test_train_config_ranges(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        train.TrainConfig(**changes)


def _run_spec(**kw):
    base = dict(data_ah="a", data_bh="b", element_a="Pd", element_b="Ni", output_dir="out")
    return RunSpec(**{**base, **kw})


@pytest.mark.parametrize("changes, pattern", [
    (dict(resume=True, overwrite=True), "resume and overwrite .* exclude each other"),
    (dict(seed=-1), r"seed must be an integer in \[0, 4294967295\]"),
    (dict(seed=MAX_SEED + 1), r"seed must be an integer"),
    (dict(seed=99999999999999999999), r"seed must be an integer"),
    (dict(element_b="Pd"), "element_a and element_b are both Pd"),
    (dict(element_a="H"), "element_a: the metals A and B cannot be H"),
    (dict(element_a="Xx"), "element_a: 'Xx' is not a chemical element symbol"),
    (dict(n_h=0), "n_h must be at least 1"),
    (dict(output_dir=""), "output_dir must not be empty"),
])
def test_run_spec_checks(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        _run_spec(**changes)
    assert _run_spec(seed=MAX_SEED).seed == MAX_SEED


def test_oversized_structure_is_refused_unless_padding_is_raised(tmp_path):
    (tmp_path / "small.vasp").write_text(ROCKSALT)
    big = io.read_structure(tmp_path / "small.vasp") * (3, 3, 3)  # 108 Pd + 108 H
    io.write_poscar(big, tmp_path / "big.vasp")
    domain = io.read_folder(tmp_path, "Pd")
    spec = _run_spec()
    with pytest.raises(io.StructureFileError,
                       match=rf"big.vasp: 108 H atoms: more than the {MAX_BLOCK_ROWS} rows .*"
                             r"pass --n_h=108"):
        check_sizes((domain,), spec)
    with pytest.raises(io.StructureFileError, match=r"108 Pd atoms: more than --n_metal=100"):
        check_sizes((domain,), dataclasses.replace(spec, n_h=108, n_metal=100))
    check_sizes((domain,), dataclasses.replace(spec, n_h=108, n_metal=108))


# --- property-based: the readers raise only StructureFileError --------------------------

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(data: bytes, seed: int, count: int) -> bytes:
    """``count`` random byte edits (replace, delete, insert, duplicate a span) of ``data``."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(max(len(out), 1))
        op = rng.randrange(4)
        if op == 0 and out:
            out[i] = rng.randrange(256)
        elif op == 1 and out:
            del out[i:i + rng.randrange(1, 8)]
        elif op == 2:
            out[i:i] = rng.choice([b" ", b"\n", b"-", b"nan", b"1e999", b"0", b"x", b"_"])
        else:
            out[i:i] = out[i:i + rng.randrange(1, 40)]
    return bytes(out)


def _read_only_raises_structure_error(path: Path, data: bytes, reader) -> None:
    path.write_bytes(data)
    try:
        reader(path)
    except io.StructureFileError as err:
        assert str(path) in str(err)


def _cif_text() -> bytes:
    s = Structure(Lattice.from_parameters(4.1, 4.2, 4.3, 88, 91, 95), ["Pd", "Pd", "H", "H"],
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(s)).encode()


@FUZZ
@given(data=st.binary(max_size=600))
def test_fuzz_random_bytes_poscar_and_cif(tmp_path, data):
    for name in ("POSCAR", "x.cif"):
        _read_only_raises_structure_error(tmp_path / name, data, io.read_structure)


@FUZZ
@given(seed=st.integers(0, 2**32), count=st.integers(1, 12))
def test_fuzz_mutated_poscar(tmp_path, seed, count):
    _read_only_raises_structure_error(tmp_path / "POSCAR", _mutate(ROCKSALT.encode(), seed, count),
                                      lambda p: io.read_folder(p.parent, "Pd"))


@FUZZ
@given(seed=st.integers(0, 2**32), count=st.integers(1, 12))
def test_fuzz_mutated_cif(tmp_path, seed, count):
    _read_only_raises_structure_error(tmp_path / "x.cif", _mutate(_cif_text(), seed, count),
                                      lambda p: io.read_folder(p.parent, "Pd"))


@pytest.fixture(scope="module")
def valid_mat(tmp_path_factory) -> bytes:
    """A small valid file in the authors' layout (two Pd-H rows), written by scipy."""
    from scipy.io import savemat

    tmp_path = tmp_path_factory.mktemp("mat")

    cells = np.empty((2, 4), dtype=object)
    for i in range(2):
        cells[i, 0] = np.eye(3) * (4.0 + i)
        cells[i, 1] = np.array([[2.0, 2.0, 2.0], [0.0, 2.0, 2.0]])
        cells[i, 2] = np.array([[0.0, 0.0, 0.0]])
        cells[i, 3] = np.zeros((18, 3))
    path = tmp_path / "valid.mat"
    savemat(path, {"d": cells})
    assert len(mat_files.read_mat(path, "Pd", 2)) == 2
    return path.read_bytes()


# Each .mat example starts a child process (about 0.5 s), so fewer examples.
MAT_FUZZ = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@MAT_FUZZ
@given(data=st.binary(max_size=400).map(lambda b: (b"MATLAB 5.0 MAT-file" + b) if len(b) % 2 else b),
       seed=st.integers(0, 2**32), count=st.integers(1, 20))
def test_fuzz_mat_random_and_mutated(tmp_path, valid_mat, data, seed, count):
    valid = valid_mat
    reader = lambda p: mat_files.read_mat(p, "Pd", 2)  # noqa: E731
    _read_only_raises_structure_error(tmp_path / "random.mat", data, reader)
    _read_only_raises_structure_error(tmp_path / "mutated.mat", _mutate(valid, seed, count),
                                      reader)
