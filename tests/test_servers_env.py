"""Where a run's workers log and which cluster they join: the environment decides."""

from pipeline import engine


def test_workers_get_tracking_credentials_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "forgeflow")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    env = engine.worker_env()
    assert env["MLFLOW_TRACKING_USERNAME"] == "forgeflow" and env["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example:5000"
    assert "MLFLOW_TRACKING_TOKEN" not in env            # unset stays unset
    assert env["PYTHONPATH"].split(":")[0] == str(engine.Path(engine.__file__).resolve().parent.parent)


def test_ray_address_from_the_environment_wins_over_the_spec(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    engine.configure_ray(None, None)
    assert engine.ray_address() is None                   # local Ray on demand
    engine.configure_ray(None, "10.0.0.10:6379")
    assert engine.ray_address() == "10.0.0.10:6379"       # the spec
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert engine.ray_address() == "auto"                 # the environment wins
    assert engine.ray_address("ray://head:10001") == "auto"
    engine.configure_ray(None, None)
