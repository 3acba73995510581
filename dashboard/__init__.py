"""The QC web app: review queue, volume views and ratings over a warehouse's DuckDB manifest.

Reads and writes the manifest only through `warehouse` (never `tasks`, `flows`, `model`, Prefect or
torch), so it can run beside a pipeline on a reviewer's machine with nothing but the warehouse.
"""
