-- The `postgres` service creates the `prefect` database (POSTGRES_DB); MLflow gets its own.
CREATE DATABASE mlflow OWNER actprm;
