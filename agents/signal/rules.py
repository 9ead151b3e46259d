"""Phrase and structure rules for spotting corrections: the first layer of the detector.

The rules never decide alone. Each family of cues becomes one feature of the
classifier in :mod:`mindloop.agents.signal.detect` (which learns how much each is worth from
the seed set), and the phrases that matched become the flag's evidence.

    >>> r = apply_rules("Rename parse_cfg to load_config.",
    ...                 "Have you considered splitting it into two functions instead?",
    ...                 "No, I asked you to just rename it.")
    >>> sorted(r.families)
    ['i_said', 'just_do', 'neg_start', 'response_alternatives']
    >>> r.type_hint
    'unwanted_alternatives'
    >>> r = apply_rules("Plan a trip.", "Day 1: ...", "No worries, now add a day in Sintra.")
    >>> r.families, r.type_hint
    (['no_worries'], None)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field

__all__ = ["FAMILIES", "RULES_SHA256", "RuleResult", "apply_rules"]

_F = re.IGNORECASE

# Cues in the user's follow-up that point to a correction. Each is (family, regex).
_CORRECTION = [
    ("neg_start", r"^\W*(no\b(?![ -](?:worries|problem|rush|need))|nope\b|nah\b|wrong\b|incorrect\b|not quite\b|"
                  r"not really\b|that'?s not\b|that is not\b|this is not\b|this isn'?t\b|that isn'?t\b|"
                  r"hmm+,? no\b|erm?,? no\b|ugh\b)"),
    ("i_said", r"\b(i (just )?(said|asked|told you|wanted|specified|mentioned|requested|explicitly)|"
               r"as i (said|asked|mentioned)|like i said|i already (said|told)|i did(n'?t| not) (ask|want|say)|"
               r"i never (asked|said|wanted)|what i asked|i told you|remember\?)"),
    ("not_what", r"\b(not what i (asked|wanted|meant|said|need)|that'?s not it|not the point|missed the point|"
                 r"you (didn'?t|did not|ignored|forgot|skipped|left out|missed)|doesn'?t answer|"
                 r"didn'?t answer|not (helpful|useful|right|correct|true|accurate)|"
                 r"that'?s not (right|correct|true|accurate|helpful)|not (really )?an answer|other way around|"
                 r"(the )?(exact )?same (sentence|thing|text|answer) (i|as)|you just (gave|repeated|copied)|"
                 r"(cuts?|cut) off|(doesn'?t|does not|won'?t) (even )?(parse|compile|run)|runs forever|"
                 r"never gets|moved the bug|(that|this|it) removes)\b"),
    ("stop_alternatives", r"\b((stop|quit|don'?t|do not|no need to|please don'?t) (suggest|recommend|offer|propose|"
                          r"push|lectur|second-guess|question)\w*|no (alternatives|suggestions|other options|"
                          r"lectures?)|without (the )?(suggest|alternativ|lectur)\w*|(i )?(don'?t|do not) want "
                          r"(alternatives|suggestions|options|another|a different)|i know\b|i'?m aware|"
                          r"i didn'?t ask (for|about) (alternatives|options|suggestions|your opinion))"),
    ("just_do", r"\b(just (do|rename|write|give|use|answer|shorten|make|fix|convert|add|run|change|tell|"
                r"translate|list|send|show|delete|remove|update|put|keep|the)|exactly (as|what) i|"
                r"as (i )?(asked|requested|instructed)|do (it|what i asked|as i said)|please do the)\b"),
    ("factual", r"\b(are you sure|you'?re wrong|you are wrong|that'?s (wrong|incorrect|false|a mistake|outdated)|"
                r"that is (wrong|incorrect|false)|(is|was|are|were)(n'?t| not) (true|right|correct)|"
                r"it'?s actually|is actually|are actually|was actually|actually,? (it|that|the|this|python|"
                r"there)\b.*\b(is|are|was|were|isn'?t|doesn'?t|has|does)|in fact|off by (one|a|an)|"
                r"should be \S+ not|mistake|miscalculat|wrong (answer|number|result|year|date|total|sum)|"
                r"doesn'?t (exist|work that way)|there is no|isn'?t (that|it) a myth|\bthough\W*$|though\?|"
                r"there'?s no such|(it|that) (won'?t|doesn'?t|"
                r"can'?t) (work|compile|run)|(throws|raises|gives) an? (error|exception))\b"),
    ("format", r"\b(too (long|short|verbose|wordy|formal|casual|much|many|detailed|brief)|way too|shorter|"
               r"longer|more concise|one (line|sentence|paragraph|word)|in (a )?(bullet|table|list)|"
               r"bullet points|as (a )?(list|table|json|csv|yaml|markdown)|only the (code|query|answer|command|"
               r"result|number)|just the (code|query|answer|command|result|number)|no (explanation|preamble|"
               r"intro)|under \d+ words|\d+ words|(plain|single) (text|line)|format|"
               r"(\d+|one|two|three|four|five) (lines?|sentences?|bullets?|items?|words?),? (max|tops|at most|please)|"
               r"max(imum)?\W*$|one (item|thing) per line|actual (checklist|list|table))\b"),
    ("scope", r"\b((didn'?t|did not|never) ask (you )?(to|for)|why did you (change|touch|add|remove|delete|"
              r"rewrite|rename|modify|include|move|book|reorder|drop)|i only (wanted|asked|needed|said)|"
              r"only (asked|wanted)|leave \w+( \w+)? alone|(don'?t|do not) touch|you (changed|removed|deleted|"
              r"rewrote|added|renamed|modified|dropped|moved|reformatted|also)\b|revert|undo|put (it|them) back|"
              r"nobody asked|not asked for|beyond what|(was|is)(n'?t| not) part of (this|the|it)|was all i (needed|wanted|"
              r"asked)|i just (needed|wanted|need|want) the)"),
    ("misunderstood", r"\b(i meant|i mean\b|i was (asking|talking|referring)|not that one|the other (one|file|"
                      r"function|column|table)|misunderstood|misread|wrong (file|one|function|column|table|city|"
                      r"person|language|version)|you (got|read) (it|that|me) wrong|i was(n'?t| not) asking|"
                      r", not (the )?\w+|not \w+,)"),
    ("thanks_but", r"^\W*(thanks|thank you|ok|okay|sure|nice|great|good|hmm+|well)\b[^.!?]{0,20}\bbut\b"),
    ("instead", r"\b(instead of|rather than|not (a|an|the) \w+[.!]?$)"),
]

# Cues that point the other way: acceptance, a new request, a question, someone else.
_BENIGN = [
    ("thanks", r"^\W*(?![^.!?]*\bbut\b)(thanks|thank you|thx|ty\b|cheers|great|perfect|awesome|nice|nailed it|"
               r"lovely|good|cool|excellent|"
               r"brilliant|amazing|wonderful|that works|works|that'?s (great|perfect|it|what i wanted|helpful)|"
               r"looks (good|great)|not bad|spot on|exactly|yes|yep|yup|ok(ay)?,? (great|thanks|cool|good)|"
               r"got it|makes sense|you'?re right|fair|right|good (catch|call|point)|agreed|"
               r"ok(ay)?\b(?![^.!?]*\bbut\b))\b"),
    ("thanks_end", r"^(?!.*\bbut\b).*\b(thanks|thank you|thx|ty)\W*$"),
    ("no_worries", r"\bno (worries|problem|rush|need to apologi[sz]e)\b"),
    ("new_request", r"^\W*(now|next|also|and|then|one more|another|can you also|could you also|please also|"
                    r"(great|thanks|perfect|ok(ay)?|cool|nice|good|lovely)[,!.]* (and|now|next|also|can|could|"
                    r"please|what about|how about)|"
                    r"while you'?re at it|separately|unrelated)\b|\bdon'?t forget to (also )?"),
    ("question", r"^\W*(why|how|what|when|where|which|who|is there|is it|does|do|can|could|would|should|will)\b"
                 r"[^?]*\?\W*$"),
    ("other_party", r"\b(my|our|the) (boss|colleague|manager|friend|teacher|linter|coworker|co-worker|team|"
                    r"teammate|wife|husband|partner|mom|mum|dad|docs|article|blog|book|website|compiler|"
                    r"reviewer|tutor|professor|doctor|client|customer|ide|tool|stack ?overflow|roommate|"
                    r"co-?founder|intern|textbook|guide|tutorial|course|forum|thread|recruiter|reddit|sister|"
                    r"brother|neighbou?r|landlord|coach|old \w+( \w+)?|previous \w+)\b|google translate|\w+'s version|"
                    r"\b(someone|somebody|they|he|she|people) (say|says|said|think|thinks|thought|claim|claims|"
                    r"told|insist|insists)\b|false positive"),
    ("agree", r"^\W*(no,? )?(point taken|you'?re right|you are right|fair (point|enough)|good (catch|point|call)|"
              r"agreed|makes sense|that makes sense|true|yikes|ok(ay)?,? (then|fine|fair)|understood|noted|"
              r"right,)\b"),
    ("refine_own", r"^\W*(actually|oh|wait|hmm)[,. ]+(also|make it|let'?s|can you|could you|change|use|i'?d like|"
                   r"i want|add)\b|i changed my mind|on second thought|change of plans?|let'?s (go with|make it)|"
                   r"i forgot to (mention|say)"),
]

# Cues in the assistant's response that make some corrections likely.
_RESPONSE = [
    ("response_pushback", r"\b(i won'?t|i wouldn'?t|i'?d push back|i'?d advise against|i (can'?t|cannot) "
                          r"(do|recommend|help)|i'?d recommend against|i'?d rather not|that would (delete|destroy|"
                          r"wipe|expose|break|remove|leak)|not safe|unsafe|dangerous|insecure|risky|not a good idea|"
                          r"before (we|you) do that|instead,? (store|use|remove|run|keep)|a safer)\b"),
    ("response_alternatives", r"\b(alternatively|you could also|you might (want|prefer|consider)|have you "
                              r"(considered|thought)|another option|other options|or maybe|consider (using|a|an)|"
                              r"instead,? (you|i|we) (could|might|would)|might be better|would be better|"
                              r"i'?d (suggest|recommend)|i recommend|a better (way|option|approach)|"
                              r"before (renaming|changing|doing|we)|you may want)\b"),
]

_COMPILED = [(name, re.compile(rx, _F)) for name, rx in _CORRECTION + _BENIGN + _RESPONSE]
FAMILIES: tuple[str, ...] = tuple(name for name, _ in _COMPILED)
# Changes whenever a rule changes; trained detector weights record it, so stale weights are caught.
RULES_SHA256 = hashlib.sha256(json.dumps([(n, rx.pattern) for n, rx in _COMPILED]).encode()).hexdigest()

_TYPE_OF = {
    "stop_alternatives": "unwanted_alternatives",
    "factual": "factual_error",
    "format": "wrong_format",
    "scope": "overstepped_scope",
    "misunderstood": "misunderstood",
    "i_said": "ignored_direction",
    "just_do": "ignored_direction",
    "not_what": "misunderstood",
}
_STOP = set("a an the to of in on for and or but is it this that i you me my your with be as at by it's "
            "was are do did not no so just please can could would".split())


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9_']+", text.lower()) if w not in _STOP and len(w) > 1}


@dataclass
class RuleResult:
    """Which cue families matched, the phrases that matched them, and the numeric features."""

    families: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    type_hint: str | None = None
    features: list[float] = field(default_factory=list)

    @property
    def pushback(self) -> bool:
        """Did the assistant's response push back on the user's direction?"""
        return "response_pushback" in self.families

    @property
    def correction_cues(self) -> int:
        return sum(1 for f in self.families if f in _CORRECTION_NAMES)


_CORRECTION_NAMES = {n for n, _ in _CORRECTION}


def apply_rules(request: str, response: str, followup: str) -> RuleResult:
    """Match every rule family against one (request, response, follow-up) triple.

    ``features`` is one 0/1 per family (in :data:`FAMILIES` order) followed by
    structure features: follow-up length (log words), ends with a question
    mark, share of the follow-up's words that restate the request, share that
    repeat the response.
    """
    found: dict[str, str] = {}
    for name, rx in _COMPILED:
        text = response if name.startswith("response_") else followup
        m = rx.search(text)
        if m:
            found[name] = m.group(0).strip()
    families = sorted(found)
    hint = None
    if found.keys() & _CORRECTION_NAMES:
        if "response_alternatives" in found and not found.keys() & {"factual", "format", "scope", "misunderstood"}:
            hint = "unwanted_alternatives"
        else:
            for name in ("stop_alternatives", "factual", "format", "scope", "misunderstood", "i_said", "just_do",
                         "not_what"):
                if name in found:
                    hint = _TYPE_OF[name]
                    break
    fw = _words(followup)
    restates = len(fw & _words(request)) / len(fw) if fw else 0.0
    repeats = len(fw & _words(response)) / len(fw) if fw else 0.0
    n_words = len(followup.split())
    features = [1.0 if name in found else 0.0 for name in FAMILIES]
    features += [math.log1p(n_words) / 4.0, 1.0 if followup.rstrip().endswith("?") else 0.0, restates, repeats]
    evidence = [f"{name}: {found[name]!r}" for name in families]
    return RuleResult(families=families, evidence=evidence, type_hint=hint, features=features)
