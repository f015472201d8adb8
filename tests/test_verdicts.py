"""Measured verdicts: one measurement per machine, however many processes ask for it at once."""
import subprocess
import sys
import textwrap

from dart import verdicts

# Each process asks for the same verdict; a measurement takes a second and leaves a line in a log.
ASK = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from dart import verdicts
    path, log = Path(sys.argv[1]), Path(sys.argv[2])
    def measure():
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\\n")
        time.sleep(1.0)
        return str(os.getpid())
    print(verdicts.measured_once(path, lambda: verdicts.read_verdict(path, None), measure,
                                 lambda value: verdicts.write_verdict(path, value)))
""")


def test_processes_asking_at_once_measure_once_and_agree(tmp_path):
    path, log = tmp_path / "cache" / "linear-0123.json", tmp_path / "measured.log"
    asks = [subprocess.Popen([sys.executable, "-c", ASK, str(path), str(log)], stdout=subprocess.PIPE, text=True)
            for _ in range(3)]
    answers = [ask.communicate(timeout=120)[0].strip() for ask in asks]
    assert all(ask.returncode == 0 for ask in asks)
    measured_by = log.read_text().split()
    assert len(measured_by) == 1                   # the others waited, then read what it stored
    assert answers == measured_by * 3


def test_without_a_cache_every_call_measures(tmp_path):
    calls = []
    for _ in range(2):
        verdicts.measured_once(None, lambda: None, lambda: calls.append(1) or "x", lambda v: None)
    assert len(calls) == 2
    assert verdicts.measured_once(tmp_path / "kept.json", lambda: "cached", lambda: calls.append(1), None) == "cached"
    assert len(calls) == 2
