"""The built-in quickstart experiment that ``rtk run`` runs when given no file."""

from pathlib import Path


def quickstart_path() -> Path:
    return Path(__file__).with_name("quickstart.toml")
