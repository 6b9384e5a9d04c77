"""Run lm-evaluation-harness (``lm-eval`` 0.4.13) on an exported model, offline.

``run_lm_eval(hf_dir, task_cfg, out_dir)`` writes the task's items — parsed by forgeflow's
reader (``tasks.load_task``), so lm-eval sees exactly the queries and choices forgeflow
scores — to ``<out_dir>/<task>.jsonl`` as ``{"query", "choices", "gold"}`` and a task YAML
beside it that reads that file with the ``json`` dataset builder (no hub):

    task: ff_<name>
    dataset_path: json
    dataset_kwargs: {data_files: {validation: <task>.jsonl, train: <task>.fewshot.jsonl}}
    output_type: multiple_choice
    doc_to_text: "{{query}}"   doc_to_choice: choices   doc_to_target: gold

then runs ``lm_eval.simple_evaluate`` with the ``hf`` model on CPU (or a GPU), with
``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` set, and returns ``acc``, ``acc_norm`` and
their standard errors plus the per-item log-likelihoods. lm-eval's HF model puts no BOS
/ EOS before a context: compare with forgeflow's scorer under ``context_prefix: none``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _write_items(path: Path, items) -> None:
    path.write_text("".join(json.dumps({"id": it.id, "query": it.query, "choices": it.choices,
                                        "gold": it.gold}) + "\n" for it in items))


def task_yaml(name: str, data_files: dict[str, str], delimiter: str, fewshot_delimiter: str) -> str:
    import yaml

    cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": data_files},
           "output_type": "multiple_choice", "validation_split": "validation",
           "doc_to_text": "{{query}}", "doc_to_choice": "choices", "doc_to_target": "gold",
           "target_delimiter": delimiter, "fewshot_delimiter": fewshot_delimiter,
           "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                           for m in ("acc", "acc_norm")]}
    if "train" in data_files:
        cfg["fewshot_split"] = "train"
    return yaml.safe_dump(cfg, sort_keys=False)


def run_lm_eval(hf_dir: Path, task_cfg, out_dir: Path, batch_size: int = 8,
                device: str = "cpu") -> dict:
    """lm-eval's results for one forgeflow ``TaskConfig`` on ``hf_dir``."""
    from pipeline.evaluate.tasks import read_items

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from pipeline.evaluate.tasks import _mapped

    parse = _mapped(task_cfg) if task_cfg.layout == "jsonl" else None
    items = read_items(Path(task_cfg.path), task_cfg.layout,
                       task_cfg.labels_path and Path(task_cfg.labels_path), task_cfg.limit,
                       parse, task_cfg.target_delimiter).items
    name = f"ff_{task_cfg.name}"
    files = {"validation": str(out_dir / f"{task_cfg.name}.jsonl")}
    _write_items(Path(files["validation"]), items)
    if task_cfg.num_fewshot and task_cfg.fewshot_path:
        shots = read_items(Path(task_cfg.fewshot_path), task_cfg.layout,
                           task_cfg.fewshot_labels_path and Path(task_cfg.fewshot_labels_path),
                           None, parse, task_cfg.target_delimiter).items
        files["train"] = str(out_dir / f"{task_cfg.name}.fewshot.jsonl")
        _write_items(Path(files["train"]), shots)
    (out_dir / f"{name}.yaml").write_text(task_yaml(name, files, task_cfg.target_delimiter,
                                                    task_cfg.fewshot_delimiter))

    import lm_eval
    from lm_eval.tasks import TaskManager

    from pipeline.train.model import MODEL_BUILD_LOCK
    # lm-eval loads the model itself, inside the call: held for the whole evaluation
    with MODEL_BUILD_LOCK, tempfile.TemporaryDirectory(prefix="forgeflow-lmeval-") as cache:
        os.environ["HF_DATASETS_CACHE"] = cache
        res = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={Path(hf_dir).resolve()},dtype=float32",
            tasks=[name], num_fewshot=task_cfg.num_fewshot or None, batch_size=batch_size,
            device=device, task_manager=TaskManager(include_path=str(out_dir)),
            log_samples=True, fewshot_random_seed=task_cfg.fewshot_seed)
    r = res["results"][name]
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    out = {k: float(r[f"{k},none"]) for k in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr")}
    out["items"] = len(samples)
    out["loglikelihoods"] = [[float(x[0]) for x in s["filtered_resps"]] for s in samples]
    out["contexts"] = [s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple))
                       else s["arguments"]["gen_args_0"]["arg_0"] for s in samples]
    (out_dir / f"{name}.results.json").write_text(json.dumps(
        {k: v for k, v in out.items() if k != "contexts"}, indent=1))
    return out
