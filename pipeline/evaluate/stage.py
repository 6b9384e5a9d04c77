"""Stage entry point ``run_evaluate``: every trained model on every source and task.

For each model (an artifact dir with ``hf/``: pretrain, then the continual phases, which
may branch — ``parents`` says which model each one continued) it computes

* ``bpb.<label>.<source>``: bits per byte on the source's val split (``bpb.py``); a model
  whose tokenizer differs from the shards' is scored on the same documents re-encoded
  with its own tokenizer (``RetokenizedSet``), so BPB compares across tokenizers;
* ``delta_bpb.<label>.<source>``: change against the model it continued (positive = worse);
* ``forgetting.<label>.<source>``: BPB minus the best BPB of any ancestor (positive = it
  forgot some of it); ``forgetting.<source>`` the same for the last model;
* ``vs_pretrain.<label>.<source>``: BPB minus pretraining's (negative = adapted / gained);
* ``acc[_norm][_stderr].<label>.<task>`` for multiple-choice tasks (``tasks.py``);
* ``curve.<label>.val_loss.<source>`` at the *global* step: the in-training validation
  loss of every stage placed end to end along the chain (``lineage.json``), so the loss
  on old and new data is one curve across phases and the re-warm bump is visible;
  ``rewarm_bump.<label>.<source>`` = highest val loss in the first quarter of a phase
  minus the value its parent ended with.

Outputs under ``ctx.out_dir``: ``bpb.json`` (all numbers), ``tasks/<label>.<task>.jsonl``
(per-item predictions), ``tables/{bpb,tasks,forgetting,curves}.json``,
``plots/{bpb,tasks,forgetting,curves}.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from pipeline.evaluate.bpb import RetokenizedSet, bits_per_byte
from pipeline.evaluate.config import EvaluateConfig
from pipeline.evaluate.tasks import evaluate_items, load_task
from pipeline.stage import StageContext
from pipeline.train.model import load_model, resolve_transformers

resolve_transformers()        # before any thread builds a model (see its docstring)

log = logging.getLogger("forgeflow")


def _same_vocab(hf_dir: Path, tok_dir: Path) -> bool:
    from tokenizers import Tokenizer

    a = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    b = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    return a.get_vocab(with_added_tokens=True) == b.get_vocab(with_added_tokens=True)


def _load(hf_dir: Path, device):
    from transformers import AutoTokenizer

    model = load_model(hf_dir, attention="sdpa").to(device)    # fp32, under the model lock
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    return model, tok


def max_positions(model) -> int:
    c = model.config
    return int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions"))


def ancestors_of(labels: list[str], parents: dict[str, str] | None) -> dict[str, list[str]]:
    """label -> its ancestors, root first; without ``parents`` the labels form one chain."""
    if parents is None:
        parents = {cur: prev for prev, cur in zip(labels, labels[1:])}
    out = {}
    for lab in labels:
        chain, cur = [], parents.get(lab)
        while cur is not None and cur not in chain:
            chain.insert(0, cur)
            cur = parents.get(cur)
        out[lab] = [a for a in chain if a in labels]
    return out


def forgetting(bpb: dict[str, dict[str, float]],
               parents: dict[str, str] | None = None) -> dict[str, float]:
    """From ``{label: {source: bpb}}`` (pipeline order) and ``parents`` (label -> the
    label it continued; default: the one before it): ``delta_bpb``, ``forgetting`` and
    ``vs_pretrain`` per label and source, and ``forgetting.<source>`` of the last label."""
    labels = list(bpb)
    anc = ancestors_of(labels, parents)
    out = {}
    for lab in labels:
        if not anc[lab]:
            continue
        parent, root = anc[lab][-1], anc[lab][0]
        for src, v in bpb[lab].items():
            if src in bpb[parent]:
                out[f"delta_bpb.{lab}.{src}"] = v - bpb[parent][src]
            if src in bpb[root]:
                out[f"vs_pretrain.{lab}.{src}"] = v - bpb[root][src]
            earlier = [bpb[a][src] for a in anc[lab] if src in bpb[a]]
            if earlier:
                out[f"forgetting.{lab}.{src}"] = v - min(earlier)
    if labels and anc[labels[-1]]:
        last = labels[-1]
        for src in bpb[last]:
            if f"forgetting.{last}.{src}" in out:
                out[f"forgetting.{src}"] = out[f"forgetting.{last}.{src}"]
    return out


def phase_curves(models: dict[str, Path]) -> dict[str, dict]:
    """label -> ``{"start", "end", "lr": [(g, lr)], "val": {source: [(g, loss)]}}`` on the
    global step axis, from each stage's ``lineage.json`` and ``train_log.jsonl``."""
    from pipeline.train.stage import read_lineage, read_log

    out = {}
    for label, art in models.items():
        records = read_log(Path(art))
        if not records:
            continue
        lin = read_lineage(Path(art))
        g0 = int(lin.get("global_step_start", 0))
        val: dict[str, list] = {}
        for r in records:
            for k, v in r.items():
                if k.startswith("val_loss."):
                    val.setdefault(k.split(".", 1)[1], []).append((g0 + r["step"], v))
        out[label] = {"start": g0, "end": g0 + int(records[-1]["step"]),
                      "lr": [(g0 + r["step"], r["lr"]) for r in records], "val": val,
                      "parent": lin.get("parent"), "tokens": lin.get("cumulative_tokens_per_source")}
    return out


def rewarm_bumps(curves: dict[str, dict], parents: dict[str, str] | None) -> dict[str, float]:
    """``rewarm_bump.<label>.<source>``: max val loss over the first quarter of a phase
    minus the last val loss of its parent (> 0: the loss rose after the phase started)."""
    labels = list(curves)
    anc = ancestors_of(labels, parents)
    out = {}
    for lab, c in curves.items():
        if not anc[lab] or anc[lab][-1] not in curves:
            continue
        parent = curves[anc[lab][-1]]
        cut = c["start"] + max(1, (c["end"] - c["start"]) // 4)
        for src, pts in c["val"].items():
            early = [v for g, v in pts if g <= cut]
            if early and parent["val"].get(src):
                out[f"rewarm_bump.{lab}.{src}"] = max(early) - parent["val"][src][-1][1]
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(ctx: StageContext, bpb: dict[str, dict[str, float]]) -> None:
    import numpy as np

    plt = _plt()
    sources = sorted({s for v in bpb.values() for s in v})
    labels = list(bpb)
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(sources) * max(1, len(labels)) / 2), 3.5))
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(sources))
    for i, lab in enumerate(labels):
        ax.bar(x + i * width, [bpb[lab].get(s, np.nan) for s in sources], width, label=lab)
    ax.set_xticks(x + width * (len(labels) - 1) / 2, sources)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("held-out bits per byte per source")
    ax.legend(fontsize=7)
    ctx.figure(fig, "bpb.png")


def _plot_tasks(ctx: StageContext, rows: list[dict]) -> None:
    import numpy as np

    plt = _plt()
    tasks = sorted({r["task"] for r in rows})
    labels = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 2 * len(tasks) * max(1, len(labels)) / 2), 3.5),
                             sharey=True)
    width = 0.8 / max(len(labels), 1)
    x = np.arange(len(tasks))
    for ax, metric in zip(axes, ("acc", "acc_norm")):
        for i, lab in enumerate(labels):
            got = {r["task"]: r for r in rows if r["model"] == lab}
            ax.bar(x + i * width, [got[t][metric] if t in got else np.nan for t in tasks], width,
                   yerr=[got[t][f"{metric}_stderr"] if t in got else 0 for t in tasks],
                   capsize=2, label=lab)
        ax.set_xticks(x + width * (len(labels) - 1) / 2, tasks, fontsize=7)
        ax.set_title(f"{metric} (± stderr)")
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7)
    ctx.figure(fig, "tasks.png")


def _plot_forgetting(ctx: StageContext, fg: dict[str, float]) -> None:
    import numpy as np

    cells = {tuple(k.split(".", 1)[1].rsplit(".", 1)): v for k, v in fg.items()
             if k.startswith("vs_pretrain.")}
    if not cells:
        return
    plt = _plt()
    labels = list(dict.fromkeys(lab for lab, _ in cells))
    sources = sorted({src for _, src in cells})
    m = np.array([[cells.get((lab, s), np.nan) for s in sources] for lab in labels])
    lim = float(np.nanmax(np.abs(m))) or 1.0
    fig, ax = plt.subplots(figsize=(1.2 * len(sources) + 3, 0.5 * len(labels) + 1.5))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(sources)), sources)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(sources)):
            if not np.isnan(m[i, j]):
                ax.text(j, i, f"{m[i, j]:+.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="BPB - pretrain BPB (red = forgot, blue = gained)")
    ax.set_title("adaptation and forgetting per source")
    ctx.figure(fig, "forgetting.png")


def _plot_curves(ctx: StageContext, curves: dict[str, dict]) -> None:
    plt = _plt()
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True,
                                    gridspec_kw={"height_ratios": [3, 1]})
    sources = sorted({s for c in curves.values() for s in c["val"]})
    colors = {s: f"C{i}" for i, s in enumerate(sources)}
    styles = ["-", "--", ":", "-."]
    for i, (lab, c) in enumerate(curves.items()):
        ls = styles[i % len(styles)]
        for src, pts in c["val"].items():
            ax.plot(*zip(*pts), ls, color=colors[src], marker=".", ms=3, lw=1,
                    label=f"{src} ({lab})")
        ax_lr.plot(*zip(*c["lr"]), ls, lw=1, label=lab)
        if c["start"] > 0:
            for a in (ax, ax_lr):
                a.axvline(c["start"], color="grey", lw=0.6, ls=":")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("validation loss per source across phases (phase starts dotted)")
    ax.legend(fontsize=6, ncol=2)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("global step")
    ctx.figure(fig, "curves.png")


def run_evaluate(cfg: EvaluateConfig, models: dict[str, Path], shards_dir: Path,
                 ctx: StageContext, parents: dict[str, str] | None = None) -> dict:
    """Evaluate ``models`` (label -> artifact dir with ``hf/``, in pipeline order);
    ``parents`` (label -> the label it continued) for branching phases, else a chain."""
    from tokenizers import Tokenizer

    from pipeline.tokenize.reader import open_shards
    from pipeline.tokenize.tokenizer import load_tokenizer, resolve_tokenizer_dir

    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    shards_dir = Path(shards_dir)
    shards = open_shards(shards_dir) if cfg.bpb else {}
    tok_dir = resolve_tokenizer_dir(shards_dir)
    tasks = {t.name: (t, load_task(t)) for t in cfg.tasks}
    metrics: dict[str, float] = {}
    for name, (tcfg, data) in tasks.items():
        metrics[f"items.{name}"] = len(data.items)
        metrics[f"bad_records.{name}"] = len(data.bad)
        if data.bad:
            ctx.note(f"- {name}: skipped {len(data.bad)} bad records, e.g. `{data.bad[0]}`")

    bpb: dict[str, dict[str, float]] = {}
    no_val: set[str] = set()          # sources warned about (once, not once per model)
    bpb_rows, task_rows, details = [], [], {}
    progress = ctx.progress(total=len(models), unit="models", desc=f"{ctx.name} evaluate")
    for label, art in models.items():
        hf_dir = Path(art) / "hf"
        if not hf_dir.is_dir():
            raise FileNotFoundError(f"model {label!r}: {hf_dir} does not exist")
        model, tok = _load(hf_dir, device)
        eos_id = tok.eos_token_id
        seq_len = min(cfg.seq_len or max_positions(model), max_positions(model))
        if cfg.bpb:
            same = _same_vocab(hf_dir, tok_dir)
            if not same:
                ctx.note(f"- {label}: tokenizer differs from the shards'; BPB on the same "
                         "documents re-encoded with the model's tokenizer")
                src_tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
                _, src_eos, _ = load_tokenizer(tok_dir)
            bpb[label] = {}
            for src in sorted(shards):
                val = shards[src]["val"]
                if len(val) == 0:
                    if src not in no_val:
                        no_val.add(src)
                        msg = (f"source {src!r} has no validation documents, so no BPB for it: "
                               "raise tokenize.val_fraction (the split is by a hash of the "
                               "document id, so a small source can draw none)")
                        log.warning("[%s] %s", ctx.name, msg)
                        ctx.note(f"- {msg}")
                    continue
                docs = val if same else RetokenizedSet(val, src_tok, tok, src_eos, eos_id)
                r = bits_per_byte(model, docs, eos_id, seq_len, cfg.stride,
                                  cfg.max_tokens_per_source, cfg.batch_size, device)
                bpb[label][src] = r.bpb
                metrics[f"bpb.{label}.{src}"] = r.bpb
                details[f"{label}.{src}"] = {"bpb": r.bpb, "nll_per_token": r.nll_per_token,
                                             "tokens": r.tokens, "bytes": r.bytes,
                                             "documents": r.documents, "retokenized": not same}
                bpb_rows.append({"model": label, "source": src, "bpb": round(r.bpb, 4),
                                 "nll_per_token": round(r.nll_per_token, 4),
                                 "tokens": r.tokens, "bytes": r.bytes,
                                 "documents": r.documents})
        for name, (tcfg, data) in tasks.items():
            summary, rows = evaluate_items(model, tok, data.items, eos_id, seq_len,
                                           cfg.batch_size, device,
                                           prefix_eos=cfg.context_prefix == "eos")
            out = ctx.out_dir / "tasks" / f"{label}.{name}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))
            for k in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
                metrics[f"{k}.{label}.{name}"] = summary[k]
            if cfg.lm_eval:
                from pipeline.evaluate.lmeval import run_lm_eval

                le = run_lm_eval(hf_dir, tcfg, ctx.out_dir / "lm_eval" / label, cfg.batch_size,
                                 str(device))
                for k in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
                    metrics[f"lm_eval.{k}.{label}.{name}"] = le[k]
                summary = {**summary, "lm_eval_acc": le["acc"], "lm_eval_acc_norm": le["acc_norm"]}
            task_rows.append({"model": label, "task": name, "layout": tcfg.layout,
                              "num_fewshot": tcfg.num_fewshot, "items": summary["items"],
                              **{k: round(summary[k], 4) for k in
                                 ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr",
                                  "lm_eval_acc", "lm_eval_acc_norm") if k in summary}})
        del model
        progress.update(1, model=label)
    progress.close()

    fg = forgetting(bpb, parents)
    metrics.update(fg)
    curves = phase_curves(models) if cfg.curves else {}
    if curves:
        metrics.update(rewarm_bumps(curves, parents))
        curve_rows = []
        for lab, c in curves.items():
            for src, pts in c["val"].items():
                for g, v in pts:
                    ctx.metric(f"curve.{lab}.val_loss.{src}", v, step=g)
                    curve_rows.append({"model": lab, "global_step": g, "source": src,
                                       "val_loss": round(v, 5)})
        if curve_rows:
            ctx.table(curve_rows, "curves.json")
            _plot_curves(ctx, curves)
    (ctx.out_dir / "bpb.json").write_text(json.dumps(
        {"bpb": bpb, "details": details, "parents": parents,
         "forgetting": {k: v for k, v in metrics.items()
                        if k.startswith(("forgetting.", "delta_bpb.", "vs_pretrain.",
                                         "rewarm_bump."))},
         "tokens": {lab: c["tokens"] for lab, c in curves.items()}}, indent=1))
    if bpb_rows:
        ctx.table(bpb_rows, "bpb.json")
        _plot(ctx, bpb)
    if fg:
        ctx.table([{"metric": k, "value": round(v, 5)} for k, v in sorted(fg.items())],
                  "forgetting.json")
        _plot_forgetting(ctx, fg)
    if task_rows:
        ctx.table(task_rows, "tasks.json")
        _plot_tasks(ctx, task_rows)
    ctx.metrics(metrics)
    for label, per_src in bpb.items():
        ctx.note(f"**{label}** BPB: " + ", ".join(f"{s} {v:.3f}" for s, v in per_src.items()))
    for k in sorted(k for k in metrics if k.startswith("forgetting.") and k.count(".") == 1):
        ctx.note(f"- {k}: {metrics[k]:+.3f} bits/byte")
    for row in task_rows:
        ctx.note(f"- {row['model']} {row['task']} ({row['num_fewshot']}-shot): "
                 f"acc {row['acc']:.3f} ± {row['acc_stderr']:.3f}, "
                 f"acc_norm {row['acc_norm']:.3f} ± {row['acc_norm_stderr']:.3f} "
                 f"({row['items']} items)")
    return metrics
