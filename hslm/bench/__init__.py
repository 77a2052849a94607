"""hslm-bench: how fast, how big and how hungry a model is on each backend (see run.py for
the plan, measure.py for one case, report.py for the output)."""
