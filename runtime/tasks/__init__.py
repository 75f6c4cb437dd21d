"""Tasks that separate easy from hard predictions, scored by logits: `edgeslim eval FILE --tasks all`.

Each task module builds its items offline, deterministically (a seed), from a text corpus
and the model's own tokenizer (no downloads):

    next    next-token accuracy on frequent vs rare target tokens   (next_token.py)
    copy    copying a random word sequence (induction)               (copying.py)
    recall  recalling a value from an in-context key-value list      (recall.py)
    cloze   long-range cloze, LAMBADA-style                          (cloze.py)

`runner.py` scores them (arg-max of the logits, no sampling) and reports accuracy with a
95% Wilson interval and n per result row. The corpus defaults to `stories.txt` in this
package (stories sampled from stories260K, see README.md here), so tasks run without
../shared; pass any UTF-8 text (e.g. TinyStories or WikiText-2) for another domain.
"""
from .common import BUILTIN_TEXT, Item, Probe, TaskResult, paired_difference, wilson
from .runner import EASY, TASKS, build_items, format_results, resolve, run_tasks, score

__all__ = ["BUILTIN_TEXT", "EASY", "Item", "Probe", "TASKS", "TaskResult", "build_items", "format_results",
           "paired_difference", "resolve", "run_tasks", "score", "wilson"]
