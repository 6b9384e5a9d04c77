"""What a paper reproduction found, printed and plotted from its evaluate artifact.

    python -m pipeline.evaluate.findings configs/papers/replay.yaml [overrides] [--workdir W]

finds the evaluate artifact of that spec (same identities as ``forgeflow validate``), and
prints one row per continual model: its parent, the change in BPB against pretraining on
every source (negative = adapted, positive = forgot), its re-warm bump, and the paper's
claim checked against those numbers (``reproduced`` / ``not reproduced`` with the numbers:
nothing is tuned to pass). Writes ``<workdir>/papers/<run.name>/findings.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def evaluate_dir(spec, workdir: Path) -> Path:
    from pipeline.plan import build_plan
    from pipeline.runner import plan_identities

    plan = build_plan(spec)
    ids = plan_identities(plan)
    node = next(n for n in plan if n.key == "evaluate")
    return Path(workdir) / node.stage / f"{node.name}-{ids['evaluate'][:12]}"


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def claims(name: str, spec, m: dict, old: list[str], new: list[str]) -> list[tuple[str, bool, str]]:
    """``(claim, holds, numbers)`` for the paper a run name stands for."""
    phases = {f"continual.{p.name}": p for p in spec.continual.phases}
    vs = lambda lab, src: m.get(f"vs_pretrain.{lab}.{src}")          # noqa: E731
    out = []
    if name == "paper_rewarm":
        rew = sorted((lab for lab, p in phases.items() if p.schedule.kind == "rewarm_cosine"),
                     key=lambda lab: float(phases[lab].schedule.max_lr))
        bumps = {lab: max((m.get(f"rewarm_bump.{lab}.{s}", float("-inf")) for s in old + new))
                 for lab in rew}
        out.append(("loss rises right after a re-warm (bump > 0 on some source)",
                    all(b > 0 for b in bumps.values()),
                    ", ".join(f"{lab.split('.', 1)[1]} {b:+.3f}" for lab, b in bumps.items())))
        ad = [_mean([vs(lab, s) for s in new]) for lab in rew]
        fg = [_mean([vs(lab, s) for s in old]) for lab in rew]
        out.append(("higher max lr adapts more (new-data BPB change decreases)",
                    all(a >= b for a, b in zip(ad, ad[1:])), ", ".join(f"{v:+.3f}" for v in ad)))
        out.append(("higher max lr forgets more (old-data BPB change increases)",
                    all(a <= b for a, b in zip(fg, fg[1:])), ", ".join(f"{v:+.3f}" for v in fg)))
    elif name == "paper_replay":
        labs = sorted(phases, key=lambda lab: phases[lab].replay)
        fg = [_mean([vs(lab, s) for s in old]) for lab in labs]
        out.append(("forgetting on old data decreases as replay grows",
                    all(a >= b for a, b in zip(fg, fg[1:])),
                    ", ".join(f"replay {phases[lab].replay:g}: {v:+.3f}" for lab, v in zip(labs, fg))))
    elif name == "paper_infinite":
        srcs = old + new
        last = {c: max(lab for lab in phases if lab.startswith(f"continual.{c}_")) for c in ("cos", "inf")}
        final = {c: _mean([m.get(f"bpb.{lab}.{s}") for s in srcs]) for c, lab in last.items()}
        out.append(("infinite ends at least as good as repeated cosine (mean BPB)",
                    final["inf"] <= final["cos"], f"cos {final['cos']:.4f}, inf {final['inf']:.4f}"))
        bump = {c: sum(max(0.0, m.get(f"rewarm_bump.{lab}.{s}", 0.0)) for lab in phases
                       if lab.startswith(f"continual.{c}_") for s in srcs) for c in ("cos", "inf")}
        out.append(("infinite has smaller loss bumps at phase starts (no re-warm)",
                    bump["inf"] < bump["cos"], f"cos {bump['cos']:.3f}, inf {bump['inf']:.3f}"))
    elif name == "paper_parmar":
        a, b = "continual.switch_in_decay", "continual.switch_at_start"
        fa, fb = _mean([vs(a, s) for s in old]), _mean([vs(b, s) for s in old])
        ta, tb = _mean([vs(a, s) for s in new]), _mean([vs(b, s) for s in new])
        out.append(("switching inside the decay keeps more of the general data",
                    fa < fb, f"old-data BPB change: in decay {fa:+.3f}, at start {fb:+.3f}"))
        out.append(("... at a comparable target loss (within 0.05 BPB)", abs(ta - tb) <= 0.05,
                    f"new-data BPB change: in decay {ta:+.3f}, at start {tb:+.3f}"))
    elif name == "paper_dapt_tapt":
        task = [s for s in new if s.startswith("task")] or new
        row = {lab: _mean([m.get(f"bpb.{lab}.{s}") for s in task])
               for lab in ["pretrain", *phases]}
        order = ["pretrain", "continual.dapt", "continual.tapt_only", "continual.dapt_tapt"]
        got = [row.get(k, float("nan")) for k in order]
        out.append(("task BPB: DAPT+TAPT < TAPT only and < DAPT only < pretrained",
                    got[3] < got[2] and got[3] < got[1] < got[0],
                    ", ".join(f"{k.split('.')[-1]} {v:.4f}" for k, v in zip(order, got))))
    return out


def report(spec, workdir: Path) -> dict:
    ev = evaluate_dir(spec, workdir)
    if not (ev / "manifest.json").exists():
        raise FileNotFoundError(f"no evaluate artifact at {ev}: run `forgeflow run` with the "
                                "same spec and overrides first")
    m = json.loads((ev / "manifest.json").read_text())["metrics"]
    parents = json.loads((ev / "bpb.json").read_text()).get("parents") or {}
    # old data: what pretraining drew from; new: what a phase adds (a weight of 0 is absent)
    old = sorted(s for s, w in spec.train.mixture.items() if w > 0)
    new = sorted({s for p in spec.continual.phases for s, w in p.mixture.items() if w > 0}
                 | {s for p in spec.continual.phases if p.switch
                    for s, w in p.switch.mixture.items() if w > 0})
    new = [s for s in new if s not in old]
    sources = old + new
    rows = []
    for p in spec.continual.phases:
        lab = f"continual.{p.name}"
        rows.append({"model": p.name, "from": parents.get(lab, "?").replace("continual.", ""),
                     **{f"Δbpb {s}": m.get(f"vs_pretrain.{lab}.{s}") for s in sources},
                     "bump": max((m.get(f"rewarm_bump.{lab}.{s}", float("nan")) for s in sources),
                                 default=float("nan"))})
    found = claims(spec.run.name, spec, m, old, new)
    lines = [f"# {spec.run.name}: BPB change against pretraining (old: {old}, new: {new})", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] if rows else []
    for r in rows:
        lines.append("| " + " | ".join(f"{v:+.4f}" if isinstance(v, float) else str(v)
                                       for v in r.values()) + " |")
    lines.append("")
    for claim, ok, nums in found:
        lines.append(f"- {'reproduced' if ok else 'NOT reproduced'}: {claim} ({nums})")
    lines.append(f"\nplots: {ev / 'plots'} (curves.png, forgetting.png, bpb.png)")
    out_dir = Path(workdir) / "papers" / spec.run.name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "findings.md").write_text("\n".join(lines) + "\n")
    (out_dir / "findings.json").write_text(json.dumps(
        {"rows": rows, "claims": [{"claim": c, "reproduced": ok, "numbers": n} for c, ok, n in found],
         "evaluate": str(ev)}, indent=1))
    _plot(rows, sources, out_dir / "findings.png", spec.run.name)
    return {"text": "\n".join(lines), "rows": rows, "claims": found, "dir": out_dir}


def _plot(rows, sources, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) * len(sources) / 2 + 3, 3.5))
    width = 0.8 / len(sources)
    x = np.arange(len(rows))
    for i, s in enumerate(sources):
        ax.bar(x + i * width, [r[f"Δbpb {s}"] if r[f"Δbpb {s}"] is not None else np.nan
                               for r in rows], width, label=s)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x + width * (len(sources) - 1) / 2, [r["model"] for r in rows], fontsize=7)
    ax.set_ylabel("BPB - pretrain BPB\n(< 0 adapted, > 0 forgot)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    from pipeline.spec import load_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--workdir")
    args = ap.parse_args(argv)
    spec = load_spec(args.config, args.overrides)
    workdir = Path(args.workdir or spec.run.workdir).resolve()   # as `forgeflow run`
    try:
        out = report(spec, workdir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out["text"])
    print(f"written: {out['dir']}/findings.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
