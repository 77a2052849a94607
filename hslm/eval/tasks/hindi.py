"""The glue lm-eval's task YAMLs in this folder name with `!function hindi.NAME`: datasets
built from `hslm.eval.data` (local files only) and per-document scores from
`hslm.eval.metrics`."""

from __future__ import annotations

from hslm.eval import data, metrics


def _split(items: list[dict]) -> dict:
    import datasets

    return {"test": datasets.Dataset.from_list(items)}


def bpb_dataset(domain: str, **_metadata) -> dict:
    return _split([{"text": line} for line in data.held_out_lines(domain)])


def cloze_dataset(**_metadata) -> dict:
    return _split(data.cloze_items())


def xquad_dataset(**_metadata) -> dict:
    return _split(data.xquad_split("test"))


def indicquest_dataset(**_metadata) -> dict:
    return _split(data.read_jsonl(data.INDICQUEST_FILE))


def agent_dataset(**_metadata) -> dict:
    return _split([{"prompt": item["prompt"], **{f"label_{name}": item["label"][name]
                                                 for name in data.AGENT_FIELDS}}
                   for item in data.agent_items("test")])


def bpb_results(doc: dict, results: list) -> dict:
    (loglikelihood,) = results
    size = len(doc["text"].encode("utf-8"))
    return {"bits_per_byte": (loglikelihood, size), "byte_perplexity": (loglikelihood, size)}


def qa_results(doc: dict, results: list[str]) -> dict:
    prediction, reference = results[0].strip(), doc["answer"]
    return {"exact_match": metrics.exact_match(prediction, reference),
            "f1": metrics.token_f1(prediction, reference)}


def indicquest_results(doc: dict, results: list[str]) -> dict:
    prediction, reference = results[0].strip(), doc["response"]
    return {"f1": metrics.token_f1(prediction, reference),
            "recall": metrics.token_recall(prediction, reference)}


def agent_results(doc: dict, results: list[str]) -> dict:
    label = {name: doc[f"label_{name}"] for name in data.AGENT_FIELDS}
    return metrics.agent_scores(results[0].strip(), label, data.AGENT_SCHEMA)
