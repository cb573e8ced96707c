"""ROUGE-L as an `evaluate` metric module, shipped in the package so it loads by path with no network.

Written like the modules on the Hugging Face hub (``evaluate.load("rouge")``), but with only the
longest-common-subsequence variant, a plain mean instead of a bootstrap when aggregating (so the
number is deterministic), and ``use_aggregator=False`` giving one score per prediction, which is
what a reward needs.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W04-1013",
    pages = "74--81",
}
"""

_DESCRIPTION = """\
ROUGE-L: F-measure (or precision / recall) of the longest common subsequence of tokens between a
prediction and a reference, computed with Google's `rouge_score` package. With several references
per prediction the best one counts.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predictions, one string each.
    references: list of references, a string or a list of strings per prediction.
    use_aggregator: return the mean over predictions (True) or one score per prediction (False).
    use_stemmer: apply the Porter stemmer to tokens (as in `rouge_score`).
    measure: "fmeasure", "precision" or "recall".
    tokenizer: optional object with a `tokenize(text) -> list[str]` method; the default keeps
        lower-cased ASCII letters and digits.
Returns:
    {"rougeL": float} or {"rougeL": list[float]}, each in [0, 1].
Examples:
    >>> rouge_l = evaluate.load("rewards/metric_modules/rouge_l")
    >>> rouge_l.compute(predictions=["the cat sat"], references=["the cat sat down"])
    {'rougeL': 0.8571428571428571}
"""

_MEASURES = ("fmeasure", "precision", "recall")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Sequence(datasets.Value("string", id="sequence")),
                }),
                datasets.Features({
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
            reference_urls=["https://en.wikipedia.org/wiki/ROUGE_(metric)"],
        )

    def _compute(self, predictions, references, use_aggregator=True, use_stemmer=False,
                 measure="fmeasure", tokenizer=None):
        if measure not in _MEASURES:
            raise ValueError(f"measure must be one of {_MEASURES}, got {measure!r}")
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer, tokenizer=tokenizer)
        scores = []
        for pred, refs in zip(predictions, references, strict=True):
            refs = [refs] if isinstance(refs, str) else list(refs)
            if not refs:
                raise ValueError("every prediction needs at least one reference")
            best = max(getattr(scorer.score(ref, pred)["rougeL"], measure) for ref in refs)
            scores.append(float(best))
        if use_aggregator:
            return {"rougeL": sum(scores) / len(scores) if scores else 0.0}
        return {"rougeL": scores}
