"""The batch pipeline as plain functions the Airflow DAGs call: catalogue, plan, render, embed, publish.

Each stage takes JSON in and gives JSON out (what Airflow passes between tasks), reads and
writes only the object store, and can be re-run: content-addressed outputs make a retry or a
second run redo nothing that is already done. `tasks` is the one module the DAG files use.
"""
