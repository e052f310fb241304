#!/bin/sh
# Container entrypoint of the MLflow server: upgrade the database schema, then serve.
# Everything comes from the environment (mlflow server reads these variables itself):
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg://USER:PASSWORD@HOST:5432/DB   (required)
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/PREFIX (proxied: clients need only the tracking URI)
#   MLFLOW_S3_ENDPOINT_URL        for MinIO or another S3-compatible store; AWS_* credentials
#   MLFLOW_SERVER_ALLOWED_HOSTS   Host headers accepted (MLflow 3 refuses unknown hosts)
#   MLFLOW_HOST, MLFLOW_PORT, MLFLOW_WORKERS
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg://mlflow:PASSWORD@postgres:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://mlflow-artifacts}"

if [ "${MLFLOW_SKIP_DB_UPGRADE:-0}" != "1" ]; then
  # Idempotent; a no-op when the schema is current. In Kubernetes a Job runs it before rollout
  # (k8s/mlflow) and the server then starts with MLFLOW_SKIP_DB_UPGRADE=1.
  mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
fi
exec mlflow server --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
  "$@"
