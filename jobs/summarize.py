"""`python -m jobs.summarize --config conf/summarize.yaml [key=value ...]`: the summarize job (see jobs/cli.py)."""
import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main("summarize"))
