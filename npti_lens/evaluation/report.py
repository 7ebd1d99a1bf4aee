"""What both demos show a reader: the evidence table with its instrument's reach, the judge's positive
control, answers side by side (`samples.md`), and the dose-response figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from npti_lens.evaluation.evidence import Cell


def _num(x: float, fmt: str = "+.2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def share_text(c: Cell) -> str:
    """NPTI's effect as a share of P2's, with its interval (n/a where P2 did not move the score)."""
    if math.isnan(c.share_p2):
        return "n/a"
    if math.isnan(c.share_p2_low):
        return f"{c.share_p2:+.2f} [unbounded]"
    return f"{c.share_p2:+.2f} [{c.share_p2_low:+.2f}, {c.share_p2_high:+.2f}]"


def evidence_table(cells: list[Cell], strength: str = "strength") -> str:
    """Per cell: the change from no intervention and from the controls, the smallest change the
    comparison could see (MDE, 80% power), the share of P2's effect, and the verdict."""
    head = (
        f"{'method':<8}{'trait':<18}{'pole':<6}{strength:>9}{'none':>6}{'induced':>8}{'control':>8}"
        f"{'vs none [95% CI]':>23}{'MDE':>6}{'vs control [95% CI]':>23}{'MDE':>6}{'P2':>6}"
        f"{'share of P2 [95% CI]':>24}{'fluency':>8}  verdict"
    )
    lines = [head, "-" * len(head)]
    for c in cells:
        vs_none = f"{c.diff_none:+.2f} [{c.ci_none_low:+.2f}, {c.ci_none_high:+.2f}]"
        vs_ctrl = f"{c.diff_control:+.2f} [{c.ci_control_low:+.2f}, {c.ci_control_high:+.2f}]"
        lines.append(
            f"{c.method:<8}{c.trait:<18}{c.pole:<6}{c.gamma:>9g}{c.none:>6.2f}{c.npti:>8.2f}{c.control:>8.2f}"
            f"{vs_none:>23}{_num(c.mde_none, '.2f'):>6}{vs_ctrl:>23}{_num(c.mde_control, '.2f'):>6}"
            f"{_num(c.p2, '.2f'):>6}{share_text(c):>24}{c.fluency:>8.2f}  {c.verdict}"
        )
    return "\n".join(lines)


def _cell_text(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "(empty)"


def samples_md(
    cells: list[dict[str, Any]],
    *,
    title: str,
    score_name: str = "P(pole)",
    per_cell: int = 3,
) -> str:
    """Markdown: per cell, `per_cell` held-out questions with the answers under each condition side
    by side, each with its score and fluency. `cells`: dicts with `trait`, `pole`, `verdict`, and
    `answers`: {condition label: scored rows in question order} (rows with `answer`, `score`,
    `fluency`)."""
    out = [f"# {title}", "",
           f"Per trait pole, the first {per_cell} held-out questions, answered under each condition; under "
           f"each answer its {score_name} (the judge) and its fluency. Read them to check the judge by eye.", ""]  # fmt: skip
    for c in cells:
        conds = list(c["answers"])
        out += [f"## {c['trait']} {c['pole']}: {c['verdict']}", ""]
        first = c["answers"][conds[0]]
        for i in range(min(per_cell, len(first))):
            out += [f"**{_cell_text(first[i]['question'])}**", ""]
            out.append("| " + " | ".join(conds) + " |")
            out.append("|" + "---|" * len(conds))
            out.append("| " + " | ".join(_cell_text(c["answers"][k][i]["answer"]) for k in conds) + " |")
            out.append(
                "| "
                + " | ".join(
                    f"{score_name} {c['answers'][k][i]['score']:.2f}, fluency {c['answers'][k][i]['fluency']:.2f}"
                    for k in conds
                )
                + " |"
            )
            out.append("")
    return "\n".join(out) + "\n"


def write_dose_figures(
    sweep: list[dict[str, Any]],
    bands: dict[tuple[str, str], dict[str, tuple[float, float, float]]],
    chosen: dict[tuple[str, str], float | None],
    folder: Path,
    *,
    floor: float,
    ylabel: str,
) -> list[Path]:
    """One dose-response figure per trait pole (`folder/{Trait}_{pole}.png`)."""
    from npti_lens.evaluation.curves import dose_response

    paths = []
    for trait, pole in dict.fromkeys((p["trait"], p["pole"]) for p in sweep):
        pts = [p for p in sweep if (p["trait"], p["pole"]) == (trait, pole)]
        paths.append(
            dose_response(pts, bands.get((trait, pole), {}), folder / f"{trait}_{pole}.png",
                          title=f"{trait} {pole}", floor=floor, chosen=chosen.get((trait, pole)), ylabel=ylabel)
        )  # fmt: skip
    return paths
