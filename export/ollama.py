"""Ollama Modelfiles: the chat template, stop tokens and sampling defaults beside a GGUF file,
so that `ollama create NAME -f Modelfile` makes a working chat model."""

from __future__ import annotations

from pathlib import Path

from hslm.tokenizer import END_OF_TURN, EOS

# Gemma's turn format in Ollama's Go template language: a system message joins the first user
# turn, the assistant speaks as "model", and an open model turn ends the prompt.
GEMMA_TEMPLATE = """{{- $system := "" }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "system" }}{{ $system = printf "%s\\n\\n" .Content }}
{{- else if eq .Role "user" }}<start_of_turn>user
{{ $system }}{{ .Content }}<end_of_turn>
{{ $system = "" }}{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

DEFAULT_PARAMETERS = {"temperature": 0.8, "top_k": 50, "top_p": 0.95, "repeat_penalty": 1.1}


def write_modelfile(gguf_path: str | Path, context_length: int,
                    parameters: dict[str, float] | None = None) -> Path:
    """Write `Modelfile` beside `gguf_path` (which it names relatively); returns its path."""
    gguf_path = Path(gguf_path)
    lines = [f"FROM ./{gguf_path.name}", f'TEMPLATE """{GEMMA_TEMPLATE}"""',
             f'PARAMETER stop "{END_OF_TURN}"', f'PARAMETER stop "{EOS}"',
             f"PARAMETER num_ctx {context_length}"]
    for name, value in {**DEFAULT_PARAMETERS, **(parameters or {})}.items():
        lines.append(f"PARAMETER {name} {value}")
    path = gguf_path.parent / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
