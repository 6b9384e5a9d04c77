# The MLflow tracking server image: the official one plus the PostgreSQL driver, installed
# at build time (never at container start). Versions match constraints.txt.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.13
