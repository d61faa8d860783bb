-- Runs once, on an empty data volume: the warehouse gets pgvector, Dagster gets its database.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE DATABASE dagster;
