CREATE DATABASE mlflow OWNER forgeflow;
