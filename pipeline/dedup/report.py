"""What the dedup stage tells MLflow and Prefect: metrics, the S-curve of the chosen
bands x rows, a cluster-size histogram, example clusters and a markdown summary."""

from __future__ import annotations

import numpy as np


def report(ctx, cfg, metrics: dict, cluster_sizes: np.ndarray, cl: dict, top: np.ndarray,
           snippets: dict, jac: np.ndarray | None, s_curve: dict, keep: str) -> None:
    ctx.metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    # cluster-size histogram (clusters with >= 2 members), log-log
    if len(cluster_sizes):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        sizes, counts = np.unique(cluster_sizes, return_counts=True)
        if sizes.max() < 30:
            ax.bar(sizes, counts, width=0.8)
        else:
            ax.plot(sizes, counts, "o", markersize=3)
        ax.set_xlabel("cluster size (documents)")
        ax.set_ylabel("clusters")
        ax.set_yscale("log")
        if sizes.max() >= 30:
            ax.set_xscale("log")
        ax.set_title(f"{ctx.name}: {len(cluster_sizes)} duplicate clusters")
        ctx.figure(fig, "cluster_sizes.png")
        ctx.table([{"cluster_size": int(s), "clusters": int(c)} for s, c in zip(sizes, counts)],
                  "cluster_size_histogram.json")

    # examples: members of the largest clusters (keeper first)
    rows = []
    for r in top.tolist():
        members = cl["doc"][cl["root"] == r]
        keeper = int(cl["keeper"][cl["root"] == r][0])
        for d in sorted(members.tolist(), key=lambda d: (d != keeper, d))[:5]:
            if d in snippets:
                doc_id, text = snippets[d]
                rows.append({"cluster": snippets.get(keeper, ("?",))[0], "size": int(len(members)),
                             "kept": d == keeper, "id": doc_id, "text": text})
    if rows:
        ctx.table(rows, "cluster_examples.json")

    if jac is not None and len(jac):
        ctx.metric("candidate_jaccard_median", float(np.median(jac)))

    bands, rows_ = metrics["bands"], metrics["rows"]
    ctx.note(f"**dedup**: {metrics['docs_in']:,} docs in, {metrics['docs_out']:,} kept; "
             f"removed {metrics['exact_removed']:,} exact and {metrics['near_removed']:,} near "
             f"duplicates ({100 * metrics['duplicate_rate']:.2f}%), keep policy `{keep}`")
    if cfg.minhash:
        ctx.note(f"- MinHash {cfg.num_perm} perms, {bands} bands x {rows_} rows, {cfg.ngram}-gram "
                 "shingles; P(candidate | Jaccard s): "
                 + ", ".join(f"s={s}: {p:.3f}" for s, p in s_curve.items()))
    ctx.note(f"- {metrics['clusters']:,} duplicate clusters, largest {metrics['largest_cluster']:,}; "
             f"{metrics['candidate_pairs']:,} candidate pairs"
             + (f", {metrics['verified_pairs']:,} verified (Jaccard >= {cfg.threshold})"
                if cfg.verify_jaccard else ""))
    if metrics["empty_docs"]:
        ctx.note(f"- {metrics['empty_docs']:,} documents with no words after normalisation "
                 "(kept; they take part in no dedup)")
