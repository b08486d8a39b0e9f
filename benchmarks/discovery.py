"""The discovery job with generator ingredients switched on or off: what each does to energy.

    python benchmarks/discovery.py --output_dir=/tmp/discovery \
        --variants='main:,dist:--distance_weight=1' [--flagfile=experiments/pdni.flags]
    python benchmarks/discovery.py --output_dir=/tmp/discovery --collect   # summarise only

Runs ``experiments/train.py --flagfile=F <variant's flags> --output_dir=<output_dir>/<name>``
once per variant (``name:flags``, flags separated by spaces; the system's hull is cached,
so only the first run relaxes it), then prints and writes ``discovery.md`` and
``discovery.json`` (or ``--out``) in ``--output_dir``, a row per variant:

- pooled unique candidates, screened, unique after relaxation, S.U.N., on or below the
  hull (E_hull <= 0), the lowest and median E_hull of the generator (eV/atom);
- formula by formula against substitution: where each side is lower, and formulas only
  the generator reaches;
- how far relaxation moved the candidates: median FIRE steps, median |volume change|,
  median RMS displacement (StructureMatcher, normalised; over the pairs that still match);
- hydrogen per metal atom (H/M) of the pooled candidates (median and range) against the
  training structures'; relaxed candidates with a space group above P1 (0.1 A);
- wall time of training and of the candidates' screening (the hull excluded: cached).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # common.py

from common import write_results  # noqa: E402
from crystalgan_jax.pipeline.discovery import summarise  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Folder of the variants' run folders and the table.")
flags.DEFINE_list("variants", ["main:"], "name:flags per variant (flags space-separated).")
flags.DEFINE_string("flagfile_for_runs", str(REPO / "experiments" / "pdni.flags"),
                    "The discovery flagfile every variant starts from.")
flags.DEFINE_bool("collect", False, "Summarise the run folders already in --output_dir.")
flags.DEFINE_string("out", None, "JSON file to write (default OUTPUT_DIR/discovery.json).")
flags.mark_flag_as_required("output_dir")


def markdown(rows: dict[str, dict]) -> str:
    head = ("| variant | unique | unique after relaxation | S.U.N. | on hull | lowest / median "
            "E_hull | formulas gen lower / sub lower / only gen | median steps | median "
            "abs dV/V | median RMS | H/M median (range) | above P1 | training s | screening s |")
    lines = [head, "|" + " --- |" * 14]
    for name, r in rows.items():
        f = r["formulas"]
        hm = r["h_per_metal"]
        lines.append(
            f"| {name} | {r['pooled_unique']} | {r['unique_after_relaxation']} | {r['sun']} | "
            f"{r['on_hull']} | {r['lowest_e_hull']} / {r['median_e_hull']} | "
            f"{f['generator']} / {f['substitution']} / {f['only generator']} | "
            f"{r['median_steps']} | {r['median_abs_volume_change']} | {r['median_rms']} | "
            f"{hm.get('median')} ({hm.get('min')}-{hm.get('max')}) | {r['above_p1']} | "
            f"{r['training_s']} | {r['screening_s']} |")
    any_row = next(iter(rows.values()), None)
    if any_row:
        t = any_row["h_per_metal_training"]
        lines.append(f"\nTraining structures' H/M: median {t['median']} "
                     f"(range {t['min']}-{t['max']}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    del argv
    out = Path(FLAGS.output_dir)
    variants = {}
    for item in FLAGS.variants:
        name, _, extra = item.partition(":")
        variants[name] = shlex.split(extra)
    if not FLAGS.collect:
        for name, extra in variants.items():
            cmd = [sys.executable, str(REPO / "experiments" / "train.py"),
                   f"--flagfile={FLAGS.flagfile_for_runs}", *extra,
                   f"--output_dir={out / name}"]
            print("running", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=REPO)
    names = variants if not FLAGS.collect else sorted(
        p.name for p in out.iterdir() if (p / "screening" / "summary.json").is_file())
    rows = {name: summarise(out / name) for name in names}
    text = markdown(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "discovery.md").write_text(text)
    write_results(FLAGS.out or out / "discovery.json",
                  {"variants": {name: " ".join(extra) for name, extra in variants.items()}
                   if not FLAGS.collect else None, "rows": rows})
    print(text)
    return 0


if __name__ == "__main__":
    app.run(main)
