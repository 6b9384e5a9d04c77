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
    # a local Ray's workers inherit the environment: no secret in Ray's runtime-env log
    local = engine.worker_env(remote=False)
    assert "MLFLOW_TRACKING_PASSWORD" not in local and local["PYTHONPATH"] == env["PYTHONPATH"]


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


def test_schedules_parse_and_deploy_needs_a_server(tmp_path):
    import datetime as dt

    import pytest

    from flows.deploy import DeployError, parse_interval, schedules
    from tests.e2e_util import cli_env
    from tests.servers import cli, tiny_spec
    assert parse_interval("90") == dt.timedelta(seconds=90)
    assert parse_interval("15m") == dt.timedelta(minutes=15)
    assert parse_interval("7d") == dt.timedelta(days=7)
    for bad in ("0", "-3", "fortnightly", "5w"):
        with pytest.raises(DeployError, match="--interval"):
            parse_interval(bad)
    cron, every = schedules("0 3 * * *", "6h")
    assert cron.cron == "0 3 * * *" and cron.timezone == "UTC" and every.interval == dt.timedelta(hours=6)
    with pytest.raises(DeployError, match="--cron"):
        schedules("every night")
    env = cli_env(tmp_path)                     # no PREFECT_API_URL
    proc = cli("serve", str(tiny_spec(tmp_path)), "--interval", "1h", env=env, check=False)
    assert proc.returncode == 2 and "PREFECT_API_URL is not set" in proc.stderr
