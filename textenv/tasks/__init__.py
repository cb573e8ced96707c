"""Built-in tasks, registered as ``textenv/<Name>-v0`` when ``textenv`` is imported.

Each factory is deterministic given its ``seed`` and builds "train" and "eval" splits, references and
preference pairs. The tasks for the tiny base models also build a small mixed-quality ``corpus`` to pretrain
one on; ChatSums-v0 and Instructions-v0 are chat tasks for a pretrained chat model (``"smollm2"``) and have none.

The multi-turn tasks (``textenv.MultiTurnTask``: GuessNumber-v0, KeyValue-v0 with tools, Nim-v0) are classes
whose constructor is the factory; each has an exact ``oracle`` and ``demonstration``/``corpus`` from it.
"""

from textenv.registry import register
from textenv.tasks.arithmetic import arithmetic_task
from textenv.tasks.chat_sums import chat_sums_task
from textenv.tasks.dialogue import dialogue_task
from textenv.tasks.guess_number import GuessNumber
from textenv.tasks.hh import hh_task
from textenv.tasks.instructions import instructions_task
from textenv.tasks.key_value import KeyValue
from textenv.tasks.nim import Nim
from textenv.tasks.preference import preference_task
from textenv.tasks.sentiment import sentiment_task

BUILTIN = {
    "textenv/Arithmetic-v0": arithmetic_task,
    "textenv/Sentiment-v0": sentiment_task,
    "textenv/Dialogue-v0": dialogue_task,
    "textenv/Preference-v0": preference_task,
    "textenv/HH-v0": hh_task,
    "textenv/ChatSums-v0": chat_sums_task,
    "textenv/Instructions-v0": instructions_task,
}
MULTITURN = {
    "textenv/GuessNumber-v0": GuessNumber,
    "textenv/KeyValue-v0": KeyValue,
    "textenv/Nim-v0": Nim,
}

for _id, _factory in {**BUILTIN, **MULTITURN}.items():
    register(_id, _factory)

__all__ = ["BUILTIN", "MULTITURN", "GuessNumber", "KeyValue", "Nim", "arithmetic_task", "chat_sums_task",
           "dialogue_task", "hh_task", "instructions_task", "preference_task", "sentiment_task"]
