"""Best-of-N with the PRM (results: bench/results/rerank.json and rerank.md).

Synthetic problems whose solutions the verifier (`actprm.synth.verify_first_error`, the pipeline's programmatic
judge) grades exactly. Per question, N candidates: the correct solution (with probability --p-correct each) or a
wrong one, made from it by one slip at a random step (a miscomputed claim, carried consistently to the end, or a
wrong final answer). Wrong candidates of a question share a likely slip half of the time, so a wrong answer can
win a vote. Each method picks one candidate per question; accuracy is the share of questions whose pick is correct:

- random: the expected accuracy of a uniform pick (the baseline, measured in the same run),
- majority: the most frequent final answer (self-consistency; ties count at their expected accuracy),
- prm-<aggregate>: the PRM's best candidate under min (Math-Shepherd), prod, last and mean (tasks.predict),
- oracle: a correct candidate whenever there is one (pass@N, the ceiling).

The PRM is --model (a folder, models:/ URI or alias of the ACTPRM_HOME registry; default: its champion), or, when
there is none, one trained here on --train-n verifier-labeled synthetic trajectories (the labels the pipeline's
verifier judge would sell) with train_prm, and said so in the results.

    .venv/bin/python bench/bench_rerank.py                              # cpu preset, ~10-20 min on 2 busy cores
    .venv/bin/python bench/bench_rerank.py --preset tiny --questions 20 --train-n 200   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actprm.synth import _CLAIM, _apply, generate, verify_first_error
from tasks.predict import AGGREGATES, aggregate, rerank_scored
from tasks.score import score_steps

RESULTS = Path(__file__).resolve().parent / "results"
ANSWER = re.compile(r"(-?\d+)(?!.*\d)")  # the last number of the final step
SLIPS = (1, -1, 2, 10, -10)
# Harmless openers that make every candidate's text its own (as sampled solutions are): without them the correct
# candidates of a question are copies of one text, and a PRM's argmax over distinct texts would face one correct
# text against several wrong ones while the random pick counts every copy.
OPENERS = ("", "Next, ", "Then ", "Now ", "Here, ")


def final_answer(steps: list[str]) -> str | None:
    m = ANSWER.search(steps[-1])
    return m.group(1) if m else None


def slipped(steps: list[str], k: int, delta: int) -> list[str] | None:
    """The solution with step k's result off by `delta`, carried consistently through the later steps and the
    final answer (k = the last step: only the stated answer is wrong); None when it cannot be carried."""
    out, running, new_running = list(steps), None, None
    last = len(steps) - 1
    if k == last:
        answer = final_answer(steps)
        return None if answer is None else steps[:-1] + [_replace_last_number(steps[-1], int(answer) + delta)]
    for i in range(last):
        m = _CLAIM.search(steps[i])
        if m is None:
            return None
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if i == k:
            a2, b2, c2 = a, b, c + delta
        elif i > k:
            if a == running:
                a2, b2 = new_running, b
            elif b == running and op in "+*":
                a2, b2 = a, new_running
            else:
                return None
            c2 = _apply(op, a2, b2)
            if c2 is None or c2 < 0:
                return None
        else:
            a2, b2, c2 = a, b, c
        out[i] = steps[i][:m.start()] + f"{a2} {op} {b2} = {c2}" + steps[i][m.end():]
        running, new_running = c, c2
    return out[:-1] + [_replace_last_number(steps[-1], new_running)]


def _replace_last_number(text: str, value: int) -> str:
    m = ANSWER.search(text)
    return text[:m.start()] + str(value) + text[m.end():]


def reworded(steps: list[str], rng: random.Random) -> list[str]:
    """The same solution with an opener drawn for each arithmetic step (the claims and the answer are untouched)."""
    return [rng.choice(OPENERS) + s[0].lower() + s[1:] if i < len(steps) - 1 and rng.random() < 0.6 else s
            for i, s in enumerate(steps)]


def make_problems(n_questions: int, n: int, p_correct: float, seed: int) -> list[list[dict]]:
    """Per question, N graded candidates {id, question, steps, correct, answer}, each worded its own way."""
    rng = random.Random(seed)
    problems = []
    for i, rec in enumerate(generate(n_questions, seed=seed + 1000, error_rate=0.0)):
        question, steps = rec["question"], rec["steps"]
        common = (rng.randrange(len(steps)), rng.choice(SLIPS))  # this question's likely slip
        cands = []
        while len(cands) < n:
            if rng.random() < p_correct:
                new = steps
            else:
                k, delta = common if rng.random() < 0.5 else (rng.randrange(len(steps)), rng.choice(SLIPS))
                new = slipped(steps, k, delta)
                if new is None or verify_first_error(question, new) != k:
                    continue
            new = reworded(new, rng)
            if any(new == c["steps"] for c in cands):
                continue
            cands.append({"id": f"q{i}c{len(cands)}", "question": question, "steps": new, "group": f"q{i}",
                          "correct": verify_first_error(question, new) == -1, "answer": final_answer(new)})
        problems.append(cands)
    return problems


def method_accuracies(problems: list[list[dict]], prm_choices: dict[str, dict[str, str]]) -> dict[str, float]:
    acc = Counter()
    for cands in problems:
        by_id = {c["id"]: c for c in cands}
        acc["random"] += sum(c["correct"] for c in cands) / len(cands)
        votes = Counter(c["answer"] for c in cands)
        top = max(votes.values())
        tied = [a for a, v in votes.items() if v == top]
        acc["majority"] += sum(any(c["correct"] for c in cands if c["answer"] == a) for a in tied) / len(tied)
        acc["oracle"] += any(c["correct"] for c in cands)
        for how, chosen in prm_choices.items():
            acc[f"prm-{how}"] += by_id[chosen[cands[0]["group"]]]["correct"]
    return {k: v / len(problems) for k, v in acc.items()}


def auroc(scores: list[float], correct: list[bool]) -> float | None:
    """P(a correct candidate outscores a wrong one), ties half (Mann-Whitney): does the PRM tell them apart at all,
    across questions."""
    pos = [s for s, c in zip(scores, correct) if c]
    neg = [s for s, c in zip(scores, correct) if not c]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def train_bench_model(preset: str, n: int, epochs: int, seed: int, out: Path, freeze_backbone: bool
                      ) -> tuple[str, dict]:
    from actprm.config import TrainConfig
    from tasks.train import train_prm

    examples = []
    for rec in generate(n, seed=seed, error_rate=0.5):
        examples.append({"question": rec["question"], "steps": rec["steps"],
                         "first_error": verify_first_error(rec["question"], rec["steps"])})
    t0 = time.perf_counter()
    cfg = TrainConfig(preset=preset, num_heads=8, epochs=epochs, batch_size=32, lr=2e-4, head_lr=3e-3, seed=seed,
                      max_length=512, freeze_backbone=freeze_backbone)
    train_prm(examples, cfg, output_dir=out, progress=True)
    return str(out / "model"), {"trained_here": True, "preset": preset, "train_trajectories": n, "epochs": epochs,
                                "freeze_backbone": freeze_backbone,
                                "labels": "verifier (the pipeline's programmatic judge)",
                                "train_seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="folder, models:/ URI or alias (default: champion, else train)")
    ap.add_argument("--preset", default="cpu", help="preset of the model trained here when there is no --model")
    ap.add_argument("--train-n", type=int, default=800)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-backbone", action="store_true",
                    help="fine-tune the backbone too (default: heads only, minutes instead of an hour on 2 cores)")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--n", type=int, default=8, help="candidates per question (best-of-N)")
    ap.add_argument("--p-correct", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "rerank.json"))
    args = ap.parse_args(argv)

    from actprm.config import load_settings
    from actprm.tracking import configure_mlflow
    from tasks.champion import champion_version
    from tasks.model_source import load_model

    settings = load_settings()
    configure_mlflow(settings.tracking_uri, settings.experiment, settings.artifact_root)
    model_ref, about = args.model, {}
    if model_ref is None and champion_version(settings.registry.model_name) is not None:
        model_ref = "champion"
    if model_ref is None:
        # Trained once per recipe and kept under ACTPRM_HOME, so a rerun of the benchmark only scores.
        recipe = f"{args.preset}-n{args.train_n}-e{args.epochs}-s{args.seed}-{'full' if args.train_backbone else 'heads'}"
        cache = settings.home / "bench" / f"rerank-{recipe}"
        if not (cache / "about.json").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=".rerank-", dir=settings.home))
            _, about = train_bench_model(args.preset, args.train_n, args.epochs, args.seed, tmp,
                                         freeze_backbone=not args.train_backbone)
            (tmp / "about.json").write_text(json.dumps(about))
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(cache)
        about = json.loads((cache / "about.json").read_text())
        model_ref = str(cache / "model")
    from tasks.export import model_reference

    reference = model_reference(model_ref, settings.registry.model_name)
    model, tokenizer, version = load_model(reference)
    about |= {"model": reference if not about else "trained here", "model_version": version,
              "preset": model.config.preset or about.get("preset")}

    problems = make_problems(args.questions, args.n, args.p_correct, args.seed)
    flat = [c for cands in problems for c in cands]
    t0 = time.perf_counter()
    scores = score_steps(model, tokenizer, flat, progress=True, desc="rerank")  # once, aggregated four ways
    seconds = time.perf_counter() - t0
    choices = {how: {g["group"]: g["chosen"] for g in rerank_scored(flat, scores, how)} for how in AGGREGATES}
    truncated = sum(s["truncated_steps"] for s in scores)
    acc = method_accuracies(problems, choices)
    correct = [c["correct"] for c in flat]
    separation = {how: auroc([aggregate(s["step_scores"], how) for s in scores], correct) for how in AGGREGATES}
    base = acc["random"]
    result = {
        "benchmark": "best-of-N rerank on verifier-graded synthetic problems",
        "command": "bench/bench_rerank.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "questions": args.questions, "n": args.n, "p_correct": args.p_correct, "seed": args.seed,
        "candidates_correct_share": sum(c["correct"] for c in flat) / len(flat),
        "model": about, "accuracy": acc,
        "ratio_to_random": {k: (v / base if base else None) for k, v in acc.items()},
        "candidate_auroc": separation,
        # How much of the way from a random pick to the oracle a method goes.
        "oracle_gap_closed": {k: ((v - base) / (acc["oracle"] - base) if acc["oracle"] > base else None)
                              for k, v in acc.items()},
        "score_seconds": round(seconds, 1), "truncated_steps": truncated,
        "host": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| method | accuracy | x random | oracle gap closed |", "|---|---|---|---|"]
    for k in ["random", "majority", *[f"prm-{h}" for h in AGGREGATES], "oracle"]:
        gap = result["oracle_gap_closed"][k]
        rows.append(f"| {k} | {acc[k]:.3f} | {result['ratio_to_random'][k]:.2f} | "
                    f"{'' if gap is None else f'{gap:.2f}'} |")
    md = [f"# Best-of-{args.n} rerank ({args.questions} questions, seed {args.seed})", "",
          f"`{result['command']}`", "", f"Model: {json.dumps(about)}", "",
          f"Candidates correct: {result['candidates_correct_share']:.3f}. How well each aggregate separates correct "
          "from wrong candidates across all questions (AUROC, 0.5 = not at all): "
          + ", ".join(f"{k} {v:.3f}" for k, v in separation.items() if v is not None), ""] + rows
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
