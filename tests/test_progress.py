"""The progress page (``boefje_runtime.pool.progress``): a real second process writes while we read."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from boefje_runtime.pool.progress import Progress, ProgressPage

#: Marks task 1, 2, 3, ... in turn, STARTED for odd numbers and RAN for even ones, as fast as it can,
#: until its stdin closes.
WRITER = """
import os, sys, threading
from boefje_runtime.pool.progress import Progress, ProgressPage
page = ProgressPage(int(sys.argv[1]))
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
number = 0
while not done.is_set():
    number += 1
    page.mark(number, Progress.STARTED if number % 2 else Progress.RAN)
"""


def test_a_read_never_sees_a_half_written_mark():
    page, fd = ProgressPage.create()
    started = time.monotonic()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(fd)], pass_fds=(fd,), stdin=subprocess.PIPE)
    os.close(fd)
    reads, torn, last = 0, [], 0
    try:
        # the writer is a new interpreter: on a loaded machine it may take seconds to start marking
        first_mark = time.monotonic() + 30
        while (page.read() or (0,))[0] == 0 and time.monotonic() < first_mark and writer.poll() is None:
            time.sleep(0.01)  # (polling a page with a deadline; nothing to wait on)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            mark = page.read()
            if mark is None:
                continue
            number, reached, at = mark
            reads += 1
            if number == 0:
                continue  # not written yet
            expected = Progress.STARTED if number % 2 else Progress.RAN
            if reached is not expected or not started <= at <= time.monotonic() or number < last:
                torn.append(mark)
            last = number
    finally:
        try:
            writer.communicate(timeout=10)  # its stdin closes: it stops
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait(10)
        page.close()
    assert writer.returncode == 0
    assert last > 1000 and reads > 1000, (last, reads)  # the two really overlapped
    assert torn == [], f"{len(torn)} of {reads} reads were torn, e.g. {torn[:3]}"
