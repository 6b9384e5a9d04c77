"""The Prefect layer: flows, tasks and deployments. Thin by design: it wires the
stages of ``pipeline.plan`` into a DAG and adds caching, retries and artifacts."""
