"""The progress line: counts, rate, ETA, and one final line (not two) on close."""
import io

from pipeline.progress import Progress


def test_final_line_printed_once():
    buf = io.StringIO()
    p = Progress("x", total=10, unit="docs", interval=0.0, stream=buf)
    p.update(10, kept=7)        # interval 0: this update prints the complete line
    p.close()                   # nothing changed since: no second copy
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[x] 10/10 (100%)") and "kept=7" in lines[0]


def test_close_prints_what_changed_since_the_last_line():
    buf = io.StringIO()
    p = Progress("x", total=4, unit="docs", interval=3600.0, stream=buf)
    p.update(1)                 # the first update always prints
    p.update(3, kept=2)         # within the interval: not printed
    p.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[x] 1/4 (25%)") and "ETA" in lines[0]
    assert lines[1].startswith("[x] 4/4 (100%)") and "kept=2" in lines[1] and "ETA" not in lines[1]


def test_disabled_prints_nothing():
    buf = io.StringIO()
    with Progress("x", total=2, stream=buf, enabled=False) as p:
        p.update(2)
    assert buf.getvalue() == ""
