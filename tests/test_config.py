"""One source of configuration: the dataclasses define each default, the flags derive from them."""

import ast
import dataclasses

import pytest
from absl import flags

from crystalgan_jax.pipeline import cli
from crystalgan_jax.core import losses
from crystalgan_jax import train
from crystalgan_jax.pipeline.spec import RunSpec
from tests.conftest import REPO

REQUIRED = ["--data_ah=a", "--data_bh=b", "--element_a=Pd", "--element_b=Ni", "--output_dir=o"]


def _leaf_fields(cls):
    """(owner, field) of every leaf field of a config dataclass, nested ones flattened."""
    out = []
    for field in dataclasses.fields(cls):
        default = field.default
        if dataclasses.is_dataclass(default):
            out.extend(_leaf_fields(type(default)))
        else:
            out.append((cls, field))
    return out


def _defined():
    fv = flags.FlagValues()
    return fv, cli.define_flags(fv)


def test_every_trainconfig_field_has_exactly_one_flag_and_one_default():
    fv, items = _defined()
    by_field = {}
    for item in items:
        by_field.setdefault((item.owner, item.field.name), []).append(item.flag)
    fields = _leaf_fields(train.TrainConfig)
    assert (losses.Weights, dataclasses.fields(losses.Weights)[0]) in fields  # nesting seen
    for owner, field in fields + _leaf_fields(RunSpec):
        assert len(by_field.get((owner, field.name), [])) == 1, (owner, field.name)
    assert len({i.flag for i in items}) == len(items)  # no two fields share a flag
    fv(["prog", *REQUIRED])
    spec = cli.spec_from_flags(fv)
    # Nothing given: every value is the dataclass default (the flags hold no copy).
    assert spec == RunSpec("a", "b", "Pd", "Ni", "o")
    assert spec.train == train.TrainConfig()
    for item in items:
        assert item.help.strip(), item.flag  # help text from the class docstring
        if item.has_default and item.default is not None and not isinstance(item.default, tuple):
            assert fv[item.flag].default == item.default, item.flag


def test_changed_default_reaches_the_flag(monkeypatch):
    # A default changed in the dataclass is what the flag gives: no second copy to edit.
    field = next(f for f in dataclasses.fields(train.TrainConfig) if f.name == "width")
    monkeypatch.setattr(field, "default", 77)
    fv, _ = _defined()
    fv(["prog", *REQUIRED])
    assert fv["width"].default == 77 and cli.spec_from_flags(fv).train.width == 77


def test_flags_and_flagfiles_override(tmp_path):
    flagfile = tmp_path / "x.flags"
    flagfile.write_text("--epochs=7\n--l5=0.25\n--constrained=H\n--occupancy_weight=2\n")
    fv, _ = _defined()
    fv(["prog", *REQUIRED, f"--flagfile={flagfile}", "--d2=3.3", "--clash_radii=0.3,1.2,1.1",
        "--n_h=9", "--noevaluate"])
    spec = cli.spec_from_flags(fv)
    assert spec.train.epochs == 7 and spec.train.d2 == 3.3
    assert spec.train.weights == losses.Weights(l5=0.25, occupancy=2.0)
    assert spec.train.classes == ((0,),)
    assert spec.train.clash_radii == (0.3, 1.2, 1.1)
    assert spec.n_h == 9 and spec.n_metal is None and spec.evaluate is False


def test_target_compositions_flag_reads_h_a_b_counts():
    fv, _ = _defined()
    fv(["prog", *REQUIRED, "--composition_sampling", "--target_compositions=4:1:3,2:2:0"])
    spec = cli.spec_from_flags(fv)
    assert spec.train.composition_sampling is True
    assert spec.train.target_compositions == ((4, 1, 3), (2, 2, 0))
    for bad in ("4:1", "4:x:3", "1:-1:2"):
        fv, _ = _defined()
        fv(["prog", *REQUIRED, f"--target_compositions={bad}"])
        with pytest.raises(cli.UsageError, match="not H:A:B atom counts"):
            cli.spec_from_flags(fv)


def test_missing_required_flag_and_bad_list_are_refused():
    fv, _ = _defined()
    with pytest.raises(flags.IllegalFlagValueError, match="data_ah"):
        fv(["prog", *REQUIRED[1:]])
        fv.validate_all_flags()
    fv, _ = _defined()
    fv(["prog", *REQUIRED, "--constrained=AX"])
    with pytest.raises(cli.UsageError, match="'X' is not one of"):
        cli.spec_from_flags(fv)


# train.py's own flags (not config fields) that the discovery flagfiles set
TRAIN_ONLY = ("num_seeds", "screen", "h_fraction", "heredity", "permutations")


def test_scripts_define_no_config_flag_by_hand_and_import_no_script():
    """experiments/ derive the config flags (no DEFINE of a config field) and import the
    package only; the flagfiles set no hyperparameter to its default."""
    _, items = _defined()
    names = {i.flag for i in items}
    for script in sorted((REPO / "experiments").glob("*.py")):
        tree = ast.parse(script.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr.startswith("DEFINE") and node.args
                    and isinstance(node.args[0], ast.Constant)):
                assert node.args[0].value not in names, (script.name, node.args[0].value)
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                assert module not in {p.stem for p in (REPO / "experiments").glob("*.py")}
        assert "sys.path" not in script.read_text(), script.name
    fv, items = _defined()
    for flagfile in sorted((REPO / "experiments").glob("*.flags")):
        for line in flagfile.read_text().splitlines():
            if line.startswith("--"):
                name, _, value = line[2:].partition("=")
                if name in TRAIN_ONLY:  # the discovery jobs' population and screening
                    assert flagfile.name in ("pdni.flags", "mgti.flags"), (flagfile.name, line)
                    continue
                if not value and isinstance(fv[name], flags.BooleanFlag):
                    value = "true"  # a bare --name sets a boolean flag
                fv[name].parse(value)
                assert fv[name].value != fv[name].default, (flagfile.name, line)
                fv[name].unparse()


def test_docstring_attributes_parser():
    class Example:
        """Doc.

        Attributes:
          a, b: shared
            text.
          c: own.
        """

    assert cli.docstring_attributes(Example) == {"a": "shared text.", "b": "shared text.",
                                                 "c": "own."}


def test_thresholds_have_one_default_the_callers_pass_them():
    """d1 and d2 have their default in TrainConfig only; the penalty, loss and evaluation
    functions take them from the caller."""
    import inspect

    from crystalgan_jax.materials import evaluation, report
    from crystalgan_jax.core import geometry

    functions = [geometry.geometric_penalty, geometry.array_penalty, losses.geometric,
                 evaluation.evaluate_structure, report.write_report,
                 report.plot_distance_histograms]
    for fn in functions:
        params = inspect.signature(fn).parameters
        for name in ("d1", "d2"):
            assert params[name].default is inspect.Parameter.empty, (fn.__qualname__, name)
    assert not hasattr(evaluation, "D1") and not hasattr(evaluation, "D2")
