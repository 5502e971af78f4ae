"""Translation behind one small interface, and its default: a word-by-word glossary, not a translation model.

No translation model installs offline, so the speech node ships :class:`GlossaryTranslator`: a short table of
English → Chinese and English → German words and two-word phrases (greetings, digits, a few common words). It
looks each recognised phrase, then word, up and keeps a word it does not know as it is. Every :class:`Translation`
names the translator that made it, and the speech node passes that name on to the client (``extra.translator``),
so nobody mistakes a glossary lookup for machine translation. Plug in a real one by passing any
:class:`Translator` to the speech pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

import attrs


@attrs.frozen
class Translation:
    """``text`` in the target language, and the name of what produced it (shown to the user)."""

    text: str
    translator: str


class Translator(Protocol):
    """Anything that turns text from one language code into another; ``name`` says what it is, to the user."""

    name: str

    async def translate(self, text: str, src_lang: str, tgt_lang: str) -> Translation: ...


GLOSSARY_LABEL = "glossary (word by word, not a translation model)"

#: English word → (Chinese, German).
EN_GLOSSARY: Mapping[str, tuple[str, str]] = {
    "hello": ("你好", "hallo"), "hi": ("嗨", "hallo"), "world": ("世界", "Welt"), "good": ("好", "gut"),
    "morning": ("早上", "Morgen"), "evening": ("晚上", "Abend"), "night": ("夜", "Nacht"), "day": ("天", "Tag"),
    "thank": ("谢谢", "danke"), "thanks": ("谢谢", "danke"), "you": ("你", "du"), "please": ("请", "bitte"),
    "yes": ("是", "ja"), "no": ("不", "nein"), "i": ("我", "ich"), "we": ("我们", "wir"), "am": ("是", "bin"),
    "is": ("是", "ist"), "are": ("是", "sind"), "the": ("", "die"), "a": ("一个", "ein"), "and": ("和", "und"),
    "how": ("怎么", "wie"), "what": ("什么", "was"), "where": ("哪里", "wo"), "time": ("时间", "Zeit"),
    "water": ("水", "Wasser"), "coffee": ("咖啡", "Kaffee"), "tea": ("茶", "Tee"), "friend": ("朋友", "Freund"),
    "goodbye": ("再见", "auf Wiedersehen"), "bye": ("再见", "tschüss"), "welcome": ("欢迎", "willkommen"),
    "zero": ("零", "null"), "one": ("一", "eins"), "two": ("二", "zwei"), "three": ("三", "drei"),
    "four": ("四", "vier"), "five": ("五", "fünf"), "six": ("六", "sechs"), "seven": ("七", "sieben"),
    "eight": ("八", "acht"), "nine": ("九", "neun"), "ten": ("十", "zehn"),
}
#: Two-word English phrases → (Chinese, German), looked up before their words.
EN_PHRASES: Mapping[str, tuple[str, str]] = {
    "good morning": ("早上好", "guten Morgen"), "good evening": ("晚上好", "guten Abend"),
    "good night": ("晚安", "gute Nacht"), "thank you": ("谢谢", "danke"), "how are": ("怎么样", "wie geht es"),
}
_COLUMN = {"zh": 0, "de": 1}
#: What :class:`GlossaryTranslator` writes, from English: English itself (unchanged), Chinese and German.
GLOSSARY_TARGETS = ("en", *_COLUMN)
_WORD = re.compile(r"[a-z']+|[^a-z'\s]+")


class GlossaryTranslator:
    """English → Chinese or German, word by word from :data:`EN_GLOSSARY`; any other pair is returned unchanged."""

    name: str = GLOSSARY_LABEL

    def __init__(self, glossary: Mapping[str, tuple[str, str]] = EN_GLOSSARY,
                 phrases: Mapping[str, tuple[str, str]] = EN_PHRASES) -> None:
        self._glossary = glossary
        self._phrases = phrases

    @staticmethod
    def supports(src_lang: str, tgt_lang: str) -> bool:
        return src_lang == "en" and tgt_lang in GLOSSARY_TARGETS

    def translate_now(self, text: str, src_lang: str, tgt_lang: str) -> Translation:
        src, tgt = src_lang.strip().lower(), tgt_lang.strip().lower()
        if src != "en" or tgt not in _COLUMN:
            return Translation(text, self.name)
        column = _COLUMN[tgt]
        tokens = _WORD.findall(text.lower())
        words, i = [], 0
        while i < len(tokens):
            phrase = self._phrases.get(" ".join(tokens[i:i + 2])) if i + 1 < len(tokens) else None
            entry = phrase or self._glossary.get(tokens[i])
            word = tokens[i] if entry is None else entry[column]
            if word:
                words.append(word)
            i += 2 if phrase else 1
        joiner = "" if tgt == "zh" else " "
        return Translation(joiner.join(words), self.name)

    async def translate(self, text: str, src_lang: str, tgt_lang: str) -> Translation:
        return self.translate_now(text, src_lang, tgt_lang)
