"""Sentence-level BLEU as an `evaluate` metric module, shipped in the package so it loads offline.

Uses NLTK's implementation with smoothing (plain BLEU is zero for any short sentence missing a
4-gram, useless as a reward) and a regex tokenizer, so no NLTK data download is needed.
``use_aggregator=False`` gives one smoothed sentence BLEU per prediction; ``True`` gives corpus BLEU.
"""

import re

import datasets
import evaluate
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

_CITATION = """\
@inproceedings{papineni-etal-2002-bleu,
    title = "{B}leu: a Method for Automatic Evaluation of Machine Translation",
    author = "Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing",
    booktitle = "Proceedings of the 40th Annual Meeting of the ACL",
    year = "2002",
    pages = "311--318",
}
@inproceedings{lin-och-2004-orange,
    title = "{ORANGE}: a Method for Evaluating Automatic Evaluation Metrics for Machine Translation",
    author = "Lin, Chin-Yew and Och, Franz Josef",
    booktitle = "COLING 2004",
    year = "2004",
}
"""

_DESCRIPTION = """\
BLEU: geometric mean of modified n-gram precisions (n = 1..max_order) times a brevity penalty,
against one or more references. Sentence scores are smoothed (Chen & Cherry 2014, NLTK's methods).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predictions, one string each.
    references: list of references, a string or a list of strings per prediction.
    use_aggregator: corpus BLEU over all predictions (True) or one sentence BLEU each (False).
    max_order: highest n-gram order, uniform weights (default 4).
    smooth_method: NLTK smoothing method name, "method0" (none) to "method7"; default "method3"
        (the exponential "exp" smoothing sacreBLEU uses for sentence BLEU).
    lowercase: lower-case before tokenising.
    tokenizer: optional callable text -> list of tokens; default splits words and punctuation.
Returns:
    {"bleu": float} or {"bleu": list[float]}, each in [0, 1].
Examples:
    >>> bleu = evaluate.load("rewards/metric_modules/bleu")
    >>> bleu.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
    {'bleu': 1.0}
"""

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text):
    return _TOKEN.findall(text)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
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
            codebase_urls=["https://github.com/nltk/nltk/blob/develop/nltk/translate/bleu_score.py"],
            reference_urls=["https://en.wikipedia.org/wiki/BLEU"],
        )

    def _compute(self, predictions, references, use_aggregator=True, max_order=4,
                 smooth_method="method3", lowercase=False, tokenizer=None):
        if not isinstance(max_order, int) or max_order < 1:
            raise ValueError(f"max_order must be a positive int, got {max_order!r}")
        if smooth_method not in {f"method{i}" for i in range(8)}:
            raise ValueError(f"unknown smooth_method {smooth_method!r}; use 'method0' .. 'method7'")
        smooth = getattr(SmoothingFunction(), smooth_method)
        tok = tokenizer or tokenize

        def split(text):
            return tok(text.lower() if lowercase else text)

        hyps = [split(p) for p in predictions]
        refs = [[split(r) for r in ([rs] if isinstance(rs, str) else rs)] for rs in references]
        if any(not r for r in refs):
            raise ValueError("every prediction needs at least one reference")
        weights = tuple([1.0 / max_order] * max_order)
        if use_aggregator:
            return {"bleu": float(corpus_bleu(refs, hyps, weights=weights, smoothing_function=smooth))
                    if hyps else 0.0}
        return {"bleu": [float(sentence_bleu(r, h, weights=weights, smoothing_function=smooth))
                         for r, h in zip(refs, hyps, strict=True)]}
