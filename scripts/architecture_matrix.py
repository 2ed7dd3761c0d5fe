"""Support matrix of mechunlearn over architecture families, measured (not written by hand).

Builds each tiny random family model (mechunlearn.tiny_models), runs every doctor check and
prints a Markdown table: one row per family, one column per check, with the largest measured
deviation among the check's rows ("ok 3e-07"; rows that require an effect, such as "the
edit changes logits", are left out of that maximum), "n/a" (with the reason below the table) or
"FAIL". Usage: ``python scripts/architecture_matrix.py [family ...]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(families: list[str]) -> int:
    import torch

    torch.set_num_threads(1)
    from mechunlearn.conformance.doctor import ORDER, doctor
    from mechunlearn.tiny_models import FAMILIES, build_tiny
    from mechunlearn.versions import versions_line

    fams = families or list(FAMILIES)
    header = "| family | HF class | " + " | ".join(ORDER) + " |"
    lines = [header, "|" + "---|" * (len(ORDER) + 2)]
    notes: dict[str, list[str]] = {}
    bad = 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for fam in fams:
            df = doctor(build_tiny(fam, os.path.join(tmp, fam)))
            cells = []
            for check in ORDER:
                sub = df[df["check"] == check]
                if (sub["status"] == "FAIL").any():
                    cells.append("FAIL")
                    bad += 1
                    continue
                ok = sub[(sub["status"] == "ok") & ~(sub["value"] > sub["tol"])]  # deviations
                na = sub[sub["status"] == "n/a"]
                cell = f"ok {ok['value'].max():.0e}" if len(ok) and ok["value"].notna().any() \
                    else ("ok" if len(ok) else "")
                if len(na):
                    cell = (cell + " + " if cell else "") + "n/a*"
                    for r in na.itertuples():
                        notes.setdefault(f"{r.target}: {r.detail}", []).append(fam)
                cells.append(cell)
            lines.append(f"| {fam} | {df.attrs['hf_class']} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print("\n*n/a rows:")
    for note, fs in notes.items():
        print(f"- {', '.join(fs)}: {note}")
    print(f"\n({versions_line()}; {len(fams)} families in {time.time() - t0:.0f} s on 1 thread)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
