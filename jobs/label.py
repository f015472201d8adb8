"""`python -m jobs.label --config conf/label.yaml [key=value ...]`: the label job (see jobs/cli.py)."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main("label"))
