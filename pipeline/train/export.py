"""The trained model goes to MLflow: the final Hugging Face export is logged as an MLflow
model (transformers flavour, ``text-generation``, with its tokenizer) on the stage's run,
and optionally registered in the model registry (``train.register_as``), so the registry
holds every trained model with the run (and so the spec and data identities) behind it.

Offline by construction (mlflow 3.17.2 ``mlflow.transformers.log_model`` read for this):
the model and tokenizer are passed as loaded components (``{"model", "tokenizer"}``;
MLflow's local-checkpoint path, ``log_model("dir", task=...)``, fails with transformers
5.x: it reads ``impl.__name__`` of a task entry that transformers 5 stores as a string);
a model card is given, so MLflow does not fetch one from the Hugging Face hub (its
license lookup validates the local path as a repo id and falls back to a note without
network); the pip requirements are given (the installed torch / transformers /
tokenizers versions), so MLflow does not reload the model in a subprocess to infer them.
"""

from __future__ import annotations

from pathlib import Path


def log_hf_model(hf_dir: Path, tracking_uri: str, run_id: str, *,
                 register_as: str | None = None, description: str = "") -> dict:
    """Log ``hf_dir`` as the MLflow model ``model`` of run ``run_id``; register it when
    ``register_as`` is given. Returns ``{"model_uri", "model_id", "registered_version"}``."""
    import mlflow
    import tokenizers
    import torch
    import transformers
    from huggingface_hub import ModelCard
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    card = ModelCard(f"---\nlicense: other\nlibrary_name: transformers\n---\n"
                     f"# forgeflow model\n\n{description or 'Trained by forgeflow.'}\n")
    reqs = [f"torch=={torch.__version__.split('+')[0]}",
            f"transformers=={transformers.__version__}", f"tokenizers=={tokenizers.__version__}"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train.model import MODEL_BUILD_LOCK
    with MODEL_BUILD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    with _use_tracking_uri(tracking_uri):
        active = mlflow.active_run()
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            info = mlflow.transformers.log_model(
                {"model": model, "tokenizer": tokenizer}, name="model", task="text-generation", model_card=card,
                pip_requirements=reqs, registered_model_name=register_as)
    return {"model_uri": info.model_uri, "model_id": getattr(info, "model_id", None),
            "registered_version": getattr(info, "registered_model_version", None)}
