"""Which offline judge sees the P2 prompt on SmolLM2? Readers x training size x trait, measured on
held-out questions (docs/judges.md, "Choosing the judge").

    python analyses/judge_choice_smollm2.py --work DIR [--engine vllm] [--traits all] [--per-question 8]
        [--readers tfidf,encoder,hidden] [--encoder minilm] [--sizes 1,2,4,8] [--personas FILE] [--json OUT]

1. training answers: `npti judge data` (P2 template, `--per-question` distinct persona descriptions
   per shipped search question and pole), in DIR/data (resumes);
2. the positive control's answers: none, P2 high and P2 low to the shipped test questions, in
   DIR/control (resumes);
3. for every reader and size k, a judge trained on the first k answers per question and pole
   (DIR/judges/READER-kK), its grouped-CV AUROC, and its positive control: P2-high vs P2-low AUROC
   (95% bootstrap interval) and, per pole, whether P2 moves its score toward the pole (p < 0.05).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from npti_lens.core.constants import ANSWERS_DIR, POLES, RUN_CFG_FILE, pole_name
from npti_lens.core.files import parse_traits, write_jsonl_atomic
from npti_lens.demos.real import PERSONAS, QUESTIONS
from npti_lens.inputs.questions import load_personas, load_questions, trait_question_file
from npti_lens.judges.classifier import ClassifierConfig, ClassifierJudge, run_rows, train
from npti_lens.judges.registry import score_rows
from npti_lens.method.protocol import load_protocol
from npti_lens.model.load import load_model
from npti_lens.workflows.answers import answer_sets
from npti_lens.workflows.judging import JudgeDataConfig, control_from, control_jobs, make_judge_data


def subset(data: Path, out: Path, traits: list[str], k: int) -> Path:
    """A copy of the judge data keeping the first k answers of every question and pole."""
    if out.exists():
        shutil.rmtree(out)
    (out / ANSWERS_DIR).mkdir(parents=True)
    shutil.copy(data / RUN_CFG_FILE, out / RUN_CFG_FILE)
    for t in traits:
        rows = [r for r in run_rows(data, t) if r["sample"] < k]
        for p in POLES:
            write_jsonl_atomic(
                out / ANSWERS_DIR / f"{pole_name(t, p)}.jsonl", [r for r in rows if r["pole"] == p]
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--traits", default="all")
    ap.add_argument("--per-question", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--readers", default="tfidf,encoder,hidden")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--personas", default=None, help="persona file (default: the shipped one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work, traits = Path(args.work), parse_traits(args.traits)
    proto = load_protocol("npti")
    search = {t: load_questions(trait_question_file(QUESTIONS / "search", t)) for t in traits}
    test = {t: load_questions(trait_question_file(QUESTIONS / "test", t)) for t in traits}
    personas = load_personas(args.personas or PERSONAS, traits)
    times = {}
    start = time.time()
    if args.engine == "vllm":
        from npti_lens.vllm.engine import VLLMEngine

        model = VLLMEngine("smollm2", induce_defaults=proto.induce_config())
    else:
        model = load_model("smollm2")
    cfg = JudgeDataConfig(per_question=args.per_question, max_new_tokens=args.max_new_tokens)
    make_judge_data(model, search, personas, work / "data", cfg, protocol=proto, progress=True)
    times["judge data (with loading)"] = time.time() - start
    start = time.time()
    jobs = control_jobs(test, personas, proto, max_new_tokens=args.max_new_tokens, batch_size=32, seed=0)
    got = answer_sets(model, jobs, work / "control", protocol=proto, progress=True)
    times["control answers"] = time.time() - start
    if args.engine == "vllm":
        model.close()
    tl = load_model("smollm2") if "hidden" in args.readers else None
    results = []
    for reader in args.readers.split(","):
        for k in [int(x) for x in args.sizes.split(",")]:
            start = time.time()
            data = subset(work / "data", work / "subsets" / f"k{k}", traits, k)
            folder = work / "judges" / f"{reader}-k{k}"
            ccfg = ClassifierConfig(reader=reader, encoder=args.encoder)
            clf = train(data, folder, traits, ccfg, model=tl)
            judge = ClassifierJudge(clf)
            scored = {j.key: score_rows(got[j.key], judge) for j in jobs}
            control = control_from(scored, traits)
            for t in traits:
                c, v = control.traits[t], clf.cfg["validity"][t]
                results.append({"reader": reader, "per_question": k, "trait": t, "n_train": v["n_answers"],
                                "cv_auroc": v["auroc"], "p2_auroc": c.auroc, "p2_auroc_low": c.auroc_low,
                                "p2_auroc_high": c.auroc_high, "p2_gap": c.poles["high"].p2 - (1 - c.poles["low"].p2),
                                **{f"sees_{p}": c.poles[p].sees for p in POLES},
                                **{f"effect_{p}": c.poles[p].effect for p in POLES},
                                **{f"p_{p}": c.poles[p].p for p in POLES}})  # fmt: skip
                r = results[-1]
                print(f"{reader:<8} k={k:<2} {t:<18} train {r['n_train']:>4}  CV AUROC {r['cv_auroc']:.3f}  "
                      f"P2 AUROC {r['p2_auroc']:.3f} [{r['p2_auroc_low']:.2f}, {r['p2_auroc_high']:.2f}]  "
                      f"sees high {r['sees_high']!s:<5} ({r['effect_high']:+.3f}, p={r['p_high']:.3f})  "
                      f"low {r['sees_low']!s:<5} ({r['effect_low']:+.3f}, p={r['p_low']:.3f})", flush=True)  # fmt: skip
            times[f"train+score {reader} k={k}"] = time.time() - start
    for what, s in times.items():
        print(f"{what}: {s:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "seconds": times}, indent=1))


if __name__ == "__main__":
    main()
