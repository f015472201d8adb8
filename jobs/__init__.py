"""Command-line jobs: `python -m jobs.summarize|qa|label --config conf/<name>.yaml [key=value ...]`."""
