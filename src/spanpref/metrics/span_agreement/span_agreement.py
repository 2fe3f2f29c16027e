"""Span agreement between two annotators of the same responses, as an `evaluate` metric.

`evaluate.load` copies this file into its modules cache and imports it from there, so the metric cannot reach
files beside it; it imports the computation from the installed spanpref package instead, which keeps one
implementation of the numbers (`spanpref.feedback.agreement.compute_span_agreement`) for the library, the
command and this module.
"""

import datasets
import evaluate

from spanpref.feedback.agreement import compute_span_agreement

_DESCRIPTION = """
Agreement of predicted spans with reference spans over the same response texts, for dislike and like spans
separately: character-level micro precision, recall and F1 (a character counts when any span of the polarity
covers it), span-level F1 with overlap matching, reason agreement on matched spans, and Cohen's kappa over
sentences (a sentence counts as marked when a span touches it), each with a bootstrap interval over responses.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one list of spans per response, each span a dict with `start`, `end` (character offsets,
        end exclusive), `polarity` ("dislike" or "like") and `reasons` (list of reason ids).
    references: the same for the reference annotator (recall is measured on these).
    texts: the response texts the offsets point into.
    rounds: bootstrap resamples of the responses (default 1000; 0: no intervals).
    seed: seed of the bootstrap (default 0).
    confidence: coverage of the intervals (default 0.95).
Returns:
    dislike metrics at the top level (`char_precision`, `char_recall`, `char_f1`, `span_f1`, `sentence_kappa`,
    ..., each with `<name>_ci`), and all of them per polarity under `dislike` and `like`. Undefined values
    (e.g. precision when nothing was predicted) are None.
Example:
    >>> metric = evaluate.load("path/to/span_agreement")
    >>> text = "Paris is in Italy. It is big."
    >>> out = metric.compute(texts=[text], references=[[{"start": 0, "end": 18, "polarity": "dislike",
    ...     "reasons": []}]], predictions=[[{"start": 9, "end": 18, "polarity": "dislike", "reasons": []}]])
    >>> round(out["char_recall"], 2)
    0.5
"""

_SPAN = {
    "start": datasets.Value("int64"),
    "end": datasets.Value("int64"),
    "polarity": datasets.Value("string"),
    "reasons": datasets.List(datasets.Value("string")),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SpanAgreement(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(_SPAN),
                    "references": datasets.List(_SPAN),
                    "texts": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, texts, rounds=1000, seed=0, confidence=0.95):
        return compute_span_agreement(texts, references, predictions, rounds=rounds, seed=seed, confidence=confidence)
