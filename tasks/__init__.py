"""Pipeline stages: one module per stage, each runnable as ``python -m tasks.<stage>``.

Importing this package pins every tool's state inside the project and turns telemetry and
hub access off, so a stage started by DVC, Prefect, pytest or by hand behaves the same.
"""

from tasks.core.environment import configure_environment

configure_environment()
