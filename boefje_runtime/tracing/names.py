"""Span and attribute names, in one place: the worker, one-shot and the finalizer name their spans
with these, and a trace backend's queries depend on them staying the same."""

from __future__ import annotations

#: Span names.
TASK_SPAN, POP, PATCH_RUNNING, RUN, POST_OUTPUT, SETTLE_DUPLICATE, GET_INPUT = (
    "boefje task", "pop", "PATCH running", "run", "POST output", "settle duplicate", "GET input",
)

#: Attribute names (OpenKAT's words: task, boefje, organisation).
TASK_ID, BOEFJE_ID, BOEFJE_VERSION, ORGANISATION = (
    "boefje.task.id", "boefje.id", "boefje.version", "boefje.organisation",
)
OUTCOME, OUTPUT_SIZE, OUTPUT_FILES, POP_TASKS = (
    "boefje.outcome", "boefje.output.size", "boefje.output.files", "boefje.pop.tasks",
)

#: The finalizer's spans (one per call it makes for a task that left the pool): ``finalize <stage>``,
#: with the task's exit (a row of docs/task-exits.md) and the stage.
FINALIZE, EXIT, FINALIZER_STAGE = "finalize", "boefje.exit", "boefje.finalizer.stage"
