"""`python -m jobs.qa --config conf/qa.yaml [key=value ...]`: the qa job (see jobs/cli.py)."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main("qa"))
