"""Do the monitor's readouts see the P2 persona prompt on SmolLM2? (docs/monitoring.md)

    python analyses/monitor_validity_smollm2.py --demo DEMO --work DIR [--engine vllm] [--json OUT]
        [--figure-trait Openness --figure PNG]

DEMO is the folder of `npti demo --model smollm2 --out DEMO` (its neurons/, run/ and judge/).
1. The positive control's answers as the demo makes them (per trait: no prompt, P2 high, P2 low to
   the first 24 shipped test questions, 48 tokens, seed 0) in DIR/control (resumes), now with their
   token ids; the share whose text equals the demo's answers/ is printed.
2. Per trait, the high pole's readout (its neurons against the low pole's; its direction at the
   block where it best separates 32 search answers per pole of the demo's run), over every answer.
3. The demo's judge scores each answer (P(high)); `validity()` gives per trait and readout the
   P2-high vs P2-low AUROC (95% bootstrap interval), P2 vs none, and the correlation with the judge.
Only un-induced answers are read: NPTI's neurons read on NPTI-induced answers see the edit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from npti_lens.core.constants import pole_name
from npti_lens.core.files import parse_traits, read_jsonl
from npti_lens.demos.real import PERSONAS, QUESTIONS
from npti_lens.evaluation.monitor_validity import trace_figure, validity
from npti_lens.inputs.questions import load_personas, load_questions, trait_question_file
from npti_lens.judges.classifier import Classifier
from npti_lens.method.protocol import load_protocol
from npti_lens.method.readout import Readout
from npti_lens.model.load import load_model
from npti_lens.workflows.answers import answer_sets
from npti_lens.workflows.judging import control_jobs
from npti_lens.workflows.monitoring import choose_layer, load_readout, monitor_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--traits", default="all")
    ap.add_argument("--n-test", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--choose-from", type=int, default=32)
    ap.add_argument("--json", default=None)
    ap.add_argument("--figure-trait", default="Openness")
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    demo, work, traits = Path(args.demo), Path(args.work), parse_traits(args.traits)
    proto = load_protocol("npti")
    test = {t: load_questions(trait_question_file(QUESTIONS / "test", t))[: args.n_test] for t in traits}
    times, start = {}, time.time()
    jobs = control_jobs(test, load_personas(PERSONAS, traits), proto, max_new_tokens=args.max_new_tokens,
                        batch_size=32, seed=0)  # fmt: skip
    missing = any(not (work / "control" / f"{j.key}.jsonl").is_file() for j in jobs)
    if args.engine == "vllm" and missing:
        from npti_lens.vllm.engine import VLLMEngine

        engine = VLLMEngine("smollm2", induce_defaults=proto.induce_config())
        got = answer_sets(engine, jobs, work / "control", protocol=proto, progress=True)
        engine.close()
        tl = load_model("smollm2")
    else:
        tl = load_model("smollm2")
        got = answer_sets(tl, jobs, work / "control", protocol=proto, progress=True)
    times["control answers (with loading)"] = time.time() - start
    same = total = 0
    for j in jobs:
        old = demo / "answers" / f"{j.key}.jsonl"
        if old.is_file():
            theirs = [r["answer"] for r in read_jsonl(old)]
            same += sum(a["answer"] == b for a, b in zip(got[j.key], theirs, strict=False))
            total += len(got[j.key])
    print(f"answers equal to the demo's: {same} of {total}")
    clf = Classifier.load(demo / "judge", model=tl)
    sets, chosen = {}, {}
    start = time.time()
    for t in traits:
        neurons, opp, direction = load_readout(demo / "neurons", t, "high")
        best, scores = choose_layer(tl, neurons, opp, direction, demo / "run", args.choose_from)
        chosen[t] = {"block": best, "auroc_search": scores[best]}
        readout = Readout(neurons, opp, direction, (best,))
        sets[t] = {}
        for cond, key in (("none", f"{t}_none"), ("high", f"{pole_name(t, 'high')}_p2"),
                          ("low", f"{pole_name(t, 'low')}_p2")):  # fmt: skip
            rows = monitor_rows(tl, got[key], readout, batch_size=8)
            judged = clf.p_high(t, [r["answer"] for r in got[key]])
            sets[t][cond] = [{**m, "p_high": float(p)} for m, p in zip(rows, judged, strict=True)]
        print(f"{t}: direction read at block {best} (search AUROC {scores[best]:.3f})", flush=True)
    times["monitor (with choosing blocks)"] = time.time() - start
    table = validity(sets)
    for r in table:
        print(f"{r['trait']:<18} {r['readout']:<6} {r['at']:<6} P2 AUROC {r['auroc_p2']:.3f} "
              f"[{r['auroc_p2_low']:.2f}, {r['auroc_p2_high']:.2f}]  high>none {r['auroc_high_vs_none']:.3f}  "
              f"none>low {r['auroc_none_vs_low']:.3f}  judge r {r['r_judge']:+.3f} rho {r['rho_judge']:+.3f}")  # fmt: skip
    for what, s in times.items():
        print(f"{what}: {s:.0f} s")
    if args.figure and args.figure_trait in sets:
        t = args.figure_trait
        names = {
            f"{t}_none": "none",
            f"{pole_name(t, 'high')}_p2": "high",
            f"{pole_name(t, 'low')}_p2": "low",
        }
        trace_figure({k: sets[t][c] for k, c in names.items()}, pole_name(t, "high"), args.figure)
    if args.json:
        Path(args.json).write_text(json.dumps({"validity": table, "blocks": chosen, "seconds": times,
                                               "equal_to_demo": [same, total]}, indent=1))  # fmt: skip
        (work / "monitored.json").write_text(json.dumps(sets))


if __name__ == "__main__":
    main()
