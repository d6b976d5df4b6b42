"""What the pipeline's operators see inside Airflow: macros, run metrics, the index versions page.

The plugin in plugins/ only registers these; they work on the object store alone, so they can
be tested without a running Airflow.
"""
