"""One task of the test Boefje API as a person wants to see it: status, history, output files, logs.

The same view serves three readers: the read-only JSON endpoint (``GET /test-api/tasks/{id}``),
``python -m boefje_runtime.testing show TASK_ID`` and the failure message of the fixture's
``assert_completed`` / ``assert_failed``. A report is plain JSON (content as base64, plus the text
when it is text), so it survives HTTP unchanged and :func:`report_lines` formats either side.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

from ..file_view import as_text, file_lines

#: Path prefix of the inspection endpoints; outside ``/api/v0`` so it never meets the protocol's paths.
REPORT_PREFIX = "/test-api/tasks"


def task_report(task: Mapping[str, Any], history: list[str], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON view of one task: what it asked for, its status history and every accepted output."""
    data = task.get("data") if isinstance(task.get("data"), Mapping) else {}
    boefje = data.get("boefje") if isinstance(data.get("boefje"), Mapping) else {}
    return {
        "id": task.get("id"),
        "status": task.get("status"),
        "history": list(history),
        "boefje": {"id": boefje.get("id"), "version": boefje.get("version"), "oci_image": boefje.get("oci_image")},
        "input_ooi": data.get("input_ooi"),
        "organisation": task.get("organisation"),
        "outputs": [
            {"status": output["status"], "files": [_file_view(item) for item in output["files"]]}
            for output in outputs
        ],
    }


def _file_view(item: Mapping[str, Any]) -> dict[str, Any]:
    content: bytes = item["content"]
    return {
        "name": item["name"],
        "tags": item.get("tags"),
        "size": len(content),
        "text": as_text(content),
        "content": base64.b64encode(content).decode("ascii"),
    }


def report_lines(report: Mapping[str, Any], log_lines: Iterable[str] | None = None) -> list[str]:
    """``report`` as text: a task line, its status history, each output file, then ``log_lines``."""
    boefje = report.get("boefje") or {}
    image = f" (image {boefje.get('oci_image')})" if boefje.get("oci_image") else ""
    lines = [
        f"task {report.get('id')}: boefje {boefje.get('id')!r} on {report.get('input_ooi')!r} for "
        f"{report.get('organisation')!r}{image}",
        f"status: {report.get('status')}; history: {' -> '.join(report.get('history') or [])}",
    ]
    outputs = report.get("outputs") or []
    if not outputs:
        lines.append("no output was posted")
    for index, output in enumerate(outputs):
        which = f" {index + 1} of {len(outputs)}" if len(outputs) > 1 else ""
        lines.append(f"output{which}: {output['status']}, {len(output['files'])} file(s)")
        for item in output["files"]:
            lines.extend(file_lines(item["name"], item.get("tags"), base64.b64decode(item["content"])))
    if log_lines is not None:
        logged = list(log_lines)
        lines.append(f"worker log lines for this task ({len(logged)}):" if logged else
                     "no worker log lines for this task were captured")
        lines.extend(f"  {line}" for line in logged)
    return lines
