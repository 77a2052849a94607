"""Task accuracy of any hslm artifact on offline Hindi tasks, through lm-evaluation-harness
(`hslm-eval`; the model class is `hslm.eval.lm.HslmLM`, the tasks are in `hslm/eval/tasks/`)."""
