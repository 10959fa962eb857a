"""The active-learning study (issue 8) on a machine that has only torch and transformers: a lent GPU.

`study/scripts/run.py` runs the study as a Prefect flow over a pool in DuckDB and logs it to MLflow; a bare GPU box has
none of those. `export` writes what the study's runs read (a pool's train and eval split with gold labels, the
uncertainty and heads knobs, and optionally the backbone) to files that travel; `run` performs the same runs
(`study.protocol.run_seed`: the untrained floor, full data, every strategy at every budget) on them and writes the
same al_study.json / .md / .png, after every run, so a machine taken back mid-study still returns what it finished.

    # here: the split of a pool the CPU study already ingested, and MiniLM with its unused vocabulary rows dropped
    .venv/bin/python study/scripts/portable.py export --home /tmp/study-home12k --pool synth-study-12000-reading \
        --output /tmp/portable/split.json.gz --backbone-out /tmp/portable/backbone
    # there: the paper's setting, the whole backbone fine-tuned with the heads, on the GPU
    python study/scripts/portable.py run --split split.json.gz --backbone backbone --seeds 0,1,2 \
        --strategies actprm,random --set budgets=0.5,1.0 --set top_layers=6 --set device=cuda --output OUT

The backbone export keeps only the word-embedding rows of tokens the split contains (and the special tokens): all
the split's trajectories read exactly the weights they read here, and MiniLM fits the device tool's 64 MiB carry
(91 MB -> ~44 MB). `export` checks that: the rebuilt backbone gives the same states as the original on a sample.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from actprm.errors import ActPRMError  # noqa: E402
from models.errors import ModelError  # noqa: E402

SPLIT_VERSION = 1
TRIMMED = "model.trimmed.safetensors"
WORDS = "embeddings.word_embeddings.weight"
FIELDS = ("id", "question", "steps", "gold_first_error")  # what the study reads of a trajectory


# -- export (here, where the pool lives) ------------------------------------------------------------
def export_split(home: str, pool: str, output: str | Path) -> dict:
    """The pool's study split (`study.protocol.load_pool`, under the home's settings) and knobs, as gzipped JSON."""
    from actprm.config import load_settings
    from actprm.store import Store
    from study import protocol as study

    settings = load_settings({"home": home})
    with Store(settings.duckdb_path) as store:
        data = study.load_pool(store, pool, settings.loop.eval_fraction, settings.train.seed)
    split = {"version": SPLIT_VERSION, "pool": pool, "split_sha256": study.split_fingerprint(data),
             "knobs": study.run_knobs(settings, pool),
             "max_length": settings.model.max_length,
             **{part: [{k: t[k] for k in FIELDS} for t in data[part]] for part in ("train", "eval")}}
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(output, "wt") as f:
        json.dump(split, f)
    return split


def read_split(path: str | Path) -> dict:
    try:
        with gzip.open(path, "rt") as f:
            split = json.load(f)
    except (OSError, ValueError) as e:
        raise ActPRMError(f"{path} is not a split written by `portable.py export`: {e}") from None
    if split.get("version") != SPLIT_VERSION:
        raise ActPRMError(f"{path} is split version {split.get('version')!r}; this script reads {SPLIT_VERSION}")
    return split


def used_token_ids(tokenizer, split: dict, max_length: int) -> list[int]:
    """Every token id the split's trajectories encode to as the study encodes them, and the special tokens."""
    from models import StepBatcher

    batcher = StepBatcher(tokenizer, max_length=max_length)
    used = set(tokenizer.all_special_ids)
    trajectories = split["train"] + split["eval"]
    for start in range(0, len(trajectories), 256):
        part = trajectories[start:start + 256]
        batch = batcher.encode([t["question"] for t in part], [t["steps"] for t in part])
        used.update(batch.input_ids[batch.attention_mask.bool()].unique().tolist())
    return sorted(used)


def export_backbone(preset: str, source: str | Path, split: dict, output: str | Path) -> dict:
    """`source` (the BERT-style model folder of a model preset) with its word embeddings cut to the rows `split`
    uses, as the preset's tokenizer (step separator added) encodes it."""
    from safetensors.torch import load_file, save_file

    from models import build_prm

    source, output = Path(source), Path(output)
    _, tokenizer = build_prm(preset, num_heads=1, freeze_backbone=True, backbone_path=str(source))
    weights = load_file(source / "model.safetensors")
    key = next((k for k in weights if k.endswith(WORDS)), None)
    if key is None:
        raise ActPRMError(f"{source}/model.safetensors has no {WORDS}: only BERT-style backbones can be trimmed")
    ids = used_token_ids(tokenizer, split, split["max_length"])
    ids = [i for i in ids if i < weights[key].shape[0]]  # the step separator is added after loading
    import torch

    index = torch.tensor(ids, dtype=torch.long)
    trimmed = {k: v for k, v in weights.items() if k != key}
    trimmed |= {f"{key}.rows": weights[key][index].contiguous(), f"{key}.ids": index,
                f"{key}.shape": torch.tensor(list(weights[key].shape))}
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt") and f.name != "README.md":
            shutil.copy2(f, output / f.name)
    save_file(trimmed, output / TRIMMED)
    return {"rows": len(ids), "of": int(weights[key].shape[0]),
            "mb": round((output / TRIMMED).stat().st_size / 1e6, 1)}


def rebuild_backbone(folder: str | Path, into: str | Path) -> Path:
    """A loadable model folder from a trimmed export: rows it dropped are zeros (the split never reads them)."""
    import torch
    from safetensors.torch import load_file, save_file

    folder, into = Path(folder), Path(into)
    if (folder / "model.safetensors").is_file():
        return folder
    if not (folder / TRIMMED).is_file():
        raise ActPRMError(f"{folder} has neither model.safetensors nor {TRIMMED}")
    weights = load_file(folder / TRIMMED)
    key = next(k[:-len(".rows")] for k in weights if k.endswith(f"{WORDS}.rows"))
    rows, ids, shape = (weights.pop(f"{key}.{part}") for part in ("rows", "ids", "shape"))
    full = torch.zeros(shape.tolist(), dtype=rows.dtype)
    full[ids] = rows
    into.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.name != TRIMMED:
            shutil.copy2(f, into / f.name)
    save_file(weights | {key: full}, into / "model.safetensors")
    return into


def check_backbone(preset: str, original: str | Path, trimmed: str | Path, split: dict, n: int = 64) -> float:
    """max |difference| of the step states the original and the rebuilt backbone give a sample of the split."""
    from study.states import cached_step_states

    sample = (split["train"] + split["eval"])[::max(1, (len(split["train"]) + len(split["eval"])) // n)][:n]
    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = rebuild_backbone(trimmed, Path(tmp) / "backbone")
        a, _ = cached_step_states(sample, preset=preset, cache_dir=None, backbone_path=str(original),
                                  max_length=split["max_length"])
        b, _ = cached_step_states(sample, preset=preset, cache_dir=None, backbone_path=str(rebuilt),
                                  max_length=split["max_length"])
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


# -- run (there, where the device is) ----------------------------------------------------------------
def merge_studies(paths: list[str | Path], output: str | Path) -> dict[str, str]:
    """One study from studies of other seeds under the same settings (e.g. each a device call's worth): the
    checks `--extend` makes (`study_report.previous_runs`: pool, split, preset, knobs, strategies), no seed twice."""
    from dataclasses import replace

    from study import report as study_report

    try:
        last = json.loads(Path(paths[-1]).read_text())
    except (OSError, ValueError) as e:
        raise ActPRMError(f"cannot merge: {e}") from None
    preset = study_report.saved_preset(last)
    runs, walls, hosts, seen = [], [], [], set()
    for path in paths:
        earlier = study_report.previous_runs(path, pool=last["pool"], preset=preset, knobs=last["knobs"],
                                             split=last["split_sha256"], train_size=last["train_size"],
                                             eval_size=last["eval_size"], strategies=tuple(last["strategies"]))
        seeds = {r["seed"] for r in earlier.runs}
        if seeds & seen:
            raise ActPRMError(f"cannot merge {path}: seed {min(seeds & seen)} is in an earlier study too")
        seen |= seeds
        runs += earlier.runs
        walls += earlier.wall_seconds
        # A study's single invocation ran its own seeds, whatever it was asked for before the machine went back.
        hosts += [h | {"seeds": sorted(seeds)} for h in earlier.hosts] if len(earlier.hosts) == 1 else earlier.hosts
    result = study_report.study_result(
        runs, preset=replace(preset, seeds=tuple(sorted(seen))), pool=last["pool"],
        strategies=tuple(last["strategies"]), train_size=last["train_size"], eval_size=last["eval_size"],
        model=last["model"], knobs=last["knobs"], split=last["split_sha256"], wall_seconds_per_invocation=walls,
        hosts=hosts)
    return study_report.write_outputs(result, output, with_plot=_can_plot())


def device_facts(device: str) -> dict:
    import torch

    facts = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count(),
             "before": None, "device": device, "torch": torch.__version__,
             "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device.startswith("cuda"):
        facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def packed_split(split: dict, *, backbone: str | None, preset, log=print):
    """The split's train and eval pools with the backbone states the preset's heads read (one backbone pass), the
    knobs a run takes, and the backbone's facts: what `run_study` trains on, and what study/scripts/signals.py reads
    where there is no DuckDB home."""
    from study import states as study_states

    data = {"train": split["train"], "eval": split["eval"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(rebuild_backbone(backbone, Path(tmp) / "backbone")) if backbone else None
        states, info = study_states.cached_step_states(
            data["train"] + data["eval"], preset=preset.model_preset, cache_dir=None,
            batch_size=preset.feature_batch_size, max_length=split["max_length"], backbone_path=path,
            threads=preset.feature_threads, top_layers=preset.top_layers, device=preset.device)
    log(f"backbone states of {len(states)} trajectories on {preset.device}: {info['seconds']:.1f}s")
    train, evaluation = study_states.pack_splits(data, states, info["top"])
    knobs = dict(split["knobs"]) | {"hidden_size": info["hidden_size"], "separator_id": info["separator_id"]}
    return train, evaluation, knobs, info


def run_study(split: dict, *, backbone: str | None, preset, strategies: tuple[str, ...], output: str | Path,
              log=print) -> dict:
    """The study's runs on the split, seed by seed: each run goes to runs.jsonl as it finishes, and the outputs
    are rewritten after every seed."""
    from study import protocol as study, report as study_report, states as study_states

    started = time.perf_counter()
    train, evaluation, knobs, info = packed_split(split, backbone=backbone, preset=preset, log=log)
    model = study_states.model_facts(info, train, evaluation)
    if backbone:  # the export it was rebuilt from, not the temporary folder it was loaded from
        model["backbone"] = str(backbone)
    host = device_facts(preset.device) | {"seeds": []}
    facts = {"preset": preset, "pool": split["pool"], "strategies": strategies, "train_size": len(train),
             "eval_size": len(evaluation), "model": model,
             "knobs": knobs | {"max_length": split["max_length"], "unread_steps_uncertain": True},
             "split": split["split_sha256"], "hosts": [host]}
    runs: list[dict] = []
    paths: dict[str, str] = {}
    Path(output).mkdir(parents=True, exist_ok=True)
    done = Path(output) / "runs.jsonl"  # every finished run at once: a machine taken back loses only the one running
    done.unlink(missing_ok=True)

    def finished(row: dict) -> None:
        with done.open("a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"seed {row['seed']} {row['strategy']:<9} budget {row['budget']:.2f}: F1 {row['f1']:.4f} at 0.5, "
            f"{row['f1_tuned']:.4f} cross-fitted; {row['labels']} labels, {row.get('steps', 0)} steps "
            f"({row['seconds']:.1f}s)")

    for seed in preset.seeds:
        runs += study.run_seed(train, evaluation, seed=seed, preset=preset, strategies=strategies, on_run=finished,
                               **knobs)
        host["seeds"] = sorted({r["seed"] for r in runs})  # what the outputs hold, should the machine go back
        # The summary wants every strategy and budget of a seed, so the outputs follow finished seeds.
        result = study_report.study_result(runs, **facts, wall_seconds_per_invocation=[time.perf_counter() - started])
        paths = study_report.write_outputs(result, output, with_plot=_can_plot())
    return {"paths": paths, "runs": len(runs), "seconds": time.perf_counter() - started}


def _can_plot() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a pool's study split (and optionally its backbone) to files")
    ex.add_argument("--home", required=True, help="the ACTPRM home whose DuckDB holds the pool")
    ex.add_argument("--pool", required=True)
    ex.add_argument("--output", required=True, help="the split file to write (gzipped JSON)")
    ex.add_argument("--model-preset", default="cpu", help="whose backbone --backbone-out trims (default: cpu)")
    ex.add_argument("--backbone-out", default=None, help="also write the trimmed backbone to this folder")
    ex.add_argument("--backbone-source", default=None,
                    help="the model folder to trim (default: the cpu preset's MiniLM)")
    rn = sub.add_parser("run", help="run the study on an exported split")
    rn.add_argument("--split", required=True)
    rn.add_argument("--backbone", default=None, help="an exported backbone (default: the model preset's own)")
    rn.add_argument("--preset", default="full", help="study preset")
    rn.add_argument("--seeds", default=None)
    rn.add_argument("--strategies", default=None)
    rn.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    rn.add_argument("--output", required=True)
    rn.add_argument("--matmul-precision", default="highest", choices=("highest", "high"),
                    help="torch.set_float32_matmul_precision: high lets a GPU multiply float32 in TF32 (~3x faster "
                         "on an H100/H200, other rounding); recorded in the outputs")
    mg = sub.add_parser("merge", help="one study from studies of other seeds under the same settings")
    mg.add_argument("studies", nargs="+", help="their al_study.json files")
    mg.add_argument("--output", required=True)
    rd = sub.add_parser("render", help="rewrite al_study.md and .png from an al_study.json (e.g. one a GPU wrote)")
    rd.add_argument("study", help="the al_study.json")
    args = ap.parse_args(argv)
    try:
        if args.command == "export":
            return _export(args)
        if args.command == "render":
            return _render(args)
        if args.command == "merge":
            print(", ".join(merge_studies(args.studies, args.output).values()))
            return 0
        return _run(args)
    except (ActPRMError, ModelError) as e:
        ap.error(str(e))
    return 2


def _export(args) -> int:
    split = export_split(args.home, args.pool, args.output)
    print(f"{args.output}: {len(split['train'])} train + {len(split['eval'])} eval trajectories of {args.pool}, "
          f"{Path(args.output).stat().st_size / 1e6:.1f} MB")
    if args.backbone_out:
        from models.presets import minilm_path

        if not (source := args.backbone_source or (minilm_path() if args.model_preset == "cpu" else None)):
            raise ActPRMError(f"--backbone-out with model preset {args.model_preset!r} needs --backbone-source")
        info = export_backbone(args.model_preset, source, split, args.backbone_out)
        diff = check_backbone(args.model_preset, source, args.backbone_out, split)
        print(f"{args.backbone_out}: {info['rows']} of {info['of']} word-embedding rows, {info['mb']} MB; "
              f"step states against the original backbone on a sample: max |diff| {diff:g}")
        if diff != 0:
            raise ActPRMError(f"the trimmed backbone changes the split's step states (max |diff| {diff:g})")
    return 0


def _run(args) -> int:
    import dataclasses

    from study import protocol as study

    preset = study.customize(study.study_preset(args.preset), study.parse_fields(args.set))
    seeds = study.parse_seeds(args.seeds)
    preset = dataclasses.replace(preset, seeds=tuple(seeds) if seeds else preset.seeds)
    split = read_split(args.split)
    import torch

    torch.set_float32_matmul_precision(args.matmul_precision)
    out = run_study(split, backbone=args.backbone, preset=preset, strategies=study.strategy_names(args.strategies),
                    output=args.output)
    print(Path(out["paths"]["markdown"]).read_text() if out["paths"] else "no full-data run finished")
    print(f"{out['runs']} runs in {out['seconds']:.0f}s; outputs: {', '.join(out['paths'].values())}")
    return 0


def _render(args) -> int:
    from study import report as study_report

    try:
        result = json.loads(Path(args.study).read_text())
    except (OSError, ValueError) as e:
        raise ActPRMError(f"cannot read the study {args.study}: {e}") from None
    paths = study_report.write_outputs(result, Path(args.study).parent, stem=Path(args.study).stem)
    print(", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
