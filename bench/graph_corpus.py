"""The synthetic corpus of bench/graph.py: seeded conversations, memory notes and search queries.

Templates x slots, so the vocabulary is wide enough for BM25 to behave as on real logs: coding, writing, data,
planning and everyday requests, each a user turn and an assistant reply of three steps; some sessions end with a
memory note. Queries use different phrasing from the corpus and the same vocabulary.

    >>> sessions = conversations(20, seed=1)
    >>> len(session_texts(sessions)) >= 20 and sessions == conversations(20, seed=1)
    True
"""

from __future__ import annotations

import random
from typing import Sequence


def _words(s: str) -> list[str]:
    return [w.strip() for w in s.split("|")]


V = {
    "lang": _words("Python|TypeScript|Go|Rust|Java|Kotlin|C++|Ruby|Bash|SQL|Elixir|Swift|C#|PHP|Scala"),
    "verb": _words("parse|load|save|fetch|validate|render|merge|sync|build|resolve|normalize|export|import|encode|"
                   "decode|schedule|retry|cache|index|serialize|compress|filter|aggregate|notify|migrate"),
    "noun": _words("config|user|invoice|session|token|payload|report|cart|order|schema|metrics|header|timestamp|"
                   "address|profile|manifest|query|snapshot|webhook|tenant|ledger|thumbnail|feed|coupon"),
    "dir": _words("src|lib|app|api|core|utils|services|handlers|models|tests|internal|pkg|scripts|jobs"),
    "error": _words("KeyError|TypeError|NullPointerException|segmentation fault|timeout|race condition|"
                    "off-by-one error|deadlock|memory leak|404 from the API|flaky test|import cycle|"
                    "UnicodeDecodeError|stack overflow|permission denied error|stale cache|connection reset"),
    "lib": _words("pandas|numpy|React|Django|FastAPI|Flask|SQLAlchemy|pytest|tokio|serde|Express|Spring|"
                  "Terraform|Docker|Kubernetes|Redis|PostgreSQL|Kafka|GraphQL|gRPC|Celery|webpack|Next.js"),
    "task_code": _words("parses ISO dates from a CSV column|deduplicates records by email|retries a request with "
                        "exponential backoff|streams a large file line by line|validates a JSON payload against a "
                        "schema|computes a rolling average over a window|paginates results from a REST API|merges "
                        "two sorted lists|memoises an expensive lookup|sends a webhook when an order is created|"
                        "reads environment variables with defaults|rate-limits outgoing requests|converts Markdown "
                        "to HTML|walks a directory tree and hashes every file|formats money in the user's locale"),
    "doc": _words("cover letter|blog post|product description|email to my landlord|wedding toast|grant proposal|"
                  "README|release notes|LinkedIn post|short story|newsletter intro|apology email|conference "
                  "abstract|performance review|job ad|thank-you note|press release|speech"),
    "tone": _words("formal|friendly|concise|playful|persuasive|neutral|warm|direct|upbeat|sober|witty"),
    "audience": _words("hiring managers|my team|new customers|investors|students|my neighbours|beginners|"
                       "executives|volunteers|parents at the school|the board|open-source contributors"),
    "topic": _words("remote work|our spring product launch|climate-friendly commuting|the history of tea|"
                    "learning Spanish|sourdough baking|a database migration|budget travel in Portugal|"
                    "open-source licensing|sleep hygiene|urban gardening|the new onboarding flow|"
                    "accessibility in web forms|saving for a first home|the quarterly roadmap|cycling to work|"
                    "composting at home|our security incident|the community library|electric cars"),
    "dataset": _words("sales|churn|web traffic|survey responses|sensor readings|support tickets|inventory|payroll|"
                      "clickstream|weather|A/B test|energy usage|shipping|hospital admissions|app reviews"),
    "col": _words("revenue|signup_date|region|customer_id|temperature|latency_ms|conversion_rate|order_total|"
                  "age_group|country|sku|session_length|plan_tier|rating|delivery_days|channel"),
    "chart": _words("line chart|histogram|box plot|scatter plot|heatmap|stacked bar chart|violin plot|"
                    "stacked area chart"),
    "tool": _words("Excel|Google Sheets|pandas|SQL|R|Power BI|Tableau|DuckDB|Polars|Looker"),
    "event": _words("team offsite|product launch|birthday party|move to a new flat|sprint planning|conference "
                    "trip|kitchen renovation|wedding|quarterly review|marathon training|hackathon|family reunion|"
                    "garden makeover|charity bake sale|hiring round"),
    "city": _words("Lisbon|Berlin|Kyoto|Toronto|Nairobi|Austin|Edinburgh|Melbourne|Oaxaca|Seoul|Porto|Krakow|"
                   "Valparaiso|Hanoi|Reykjavik"),
    "when": _words("next Friday|the first week of March|in two weeks|over the long weekend|before the end of the "
                   "quarter|on Sunday morning|after the holidays|by Thursday noon|in late September|tomorrow"),
    "person": _words("Priya|Marco|Aisha|Tom|Lena|Kenji|Sofia|Daniel|Fatima|Oliver|Mateo|Yuki|Grace|Omar|Ines"),
    "money": _words("$500|$2,000|EUR 1,200|GBP 300|$15,000|EUR 80 a head|$40 per person"),
    "dish": _words("lentil soup|banana bread|pad thai|shakshuka|mushroom risotto|bean chilli|overnight oats|"
                   "vegetable curry|pancakes|focaccia|Greek salad|miso ramen|fish tacos|lemon tart"),
    "ingredient": _words("eggs|butter|coriander|oat milk|chickpeas|garlic|gluten-free flour|spinach|tofu|feta|"
                         "sweet potatoes|tahini|leftover rice|frozen peas|courgettes|smoked paprika"),
    "stain": _words("red wine|coffee|grass|ink|olive oil|tomato sauce|sweat|blood"),
    "fabric": _words("cotton|linen|silk|wool|polyester|denim"),
    "equipment": _words("two dumbbells|a resistance band|a kettlebell|just a chair|a yoga mat|a jump rope"),
    "hobby": _words("birdwatching|board games|bouldering|jazz|pottery|sci-fi novels|film photography|chess"),
    "language": _words("French|Japanese|German|Portuguese|Korean|Italian|Swahili|Dutch"),
    "pref": _words("tabs over spaces|short answers without preamble|metric units|British spelling|type hints in "
                   "Python|no emojis|SQL keywords in upper case|vegetarian recipes|morning meetings|bullet points "
                   "over prose|dark mode screenshots|24-hour times|Oxford commas|plain-text emails|pytest over "
                   "unittest|ISO 8601 dates"),
}

USER = {
    "coding": [
        "rename {ident} to {ident2} in {file} and update every caller",
        "why does {ident} throw a {error} when the {noun} is empty?",
        "write a {lang} function that {task_code}",
        "add unit tests for {ident} in {file}",
        "refactor {file} so that {ident} no longer depends on {lib}",
        "the build fails with a {error} after upgrading {lib}; here is the log from {file}",
        "convert this {lang} snippet to {lang2} and keep the same behaviour",
        "review my change: {ident} now calls {ident2} before writing the {noun}",
        "just fix the {error} in {ident}, do not touch the rest of {file}",
        "how do I mock {lib} when testing {ident}?",
    ],
    "writing": [
        "write a {tone} {doc} about {topic} for {audience}",
        "shorten this {doc} to {n} words without losing the point about {topic}",
        "make the {doc} sound less {tone} and more {tone2}",
        "proofread my {doc} for {audience}; keep my wording where you can",
        "give me three titles for a {doc} on {topic}",
        "rewrite the opening of my {doc} so {audience} keep reading",
    ],
    "data": [
        "in the {dataset} data, group by {col} and sum {col2}",
        "write a SQL query that finds the top {n} {col} values in the {dataset} table",
        "which {chart} best shows {col} by {col2}?",
        "my {dataset} sheet has duplicate {col} rows; how do I remove them in {tool}?",
        "fill the missing {col} values in the {dataset} export with the median per {col2}",
        "plot {col} over time as a {chart} in {tool}",
        "why is the {col} total in {tool} different from the {dataset} dashboard?",
    ],
    "planning": [
        "plan a {n}-day itinerary in {city} around the {event}",
        "make a checklist for the {event} {when}",
        "draft an agenda for the {event} with {person} and {person2}",
        "how should I split a budget of {money} for the {event}?",
        "remind me to call {person} about the {event} {when}",
        "break the {event} into weekly milestones ending {when}",
    ],
    "everyday": [
        "give me a recipe for {dish} without {ingredient}",
        "what can I cook with {ingredient}, {ingredient2} and {ingredient3}?",
        "how do I get a {stain} stain out of a {fabric} shirt?",
        "suggest a {n}-minute workout I can do at home with {equipment}",
        "translate 'see you at the {event}' into {language}",
        "what is a good gift for {person} who likes {hobby}?",
        "help me write a polite message to {person} about the {event}",
    ],
}

STEPS = {
    "coding": ["add a failing test for {ident} first", "keep the public signature of {ident}",
               "check the callers in {file}", "run the {lang} linter", "pin {lib} to the last good version",
               "log the {noun} before it reaches {ident2}", "guard against an empty {noun}"],
    "writing": ["open with the main point about {topic}", "cut the adjectives", "end with one clear ask",
                "keep it {tone}", "address {audience} directly", "trim it to about {n} words"],
    "data": ["check {col} for nulls", "cast {col} to the right type", "filter the {dataset} rows by {col2}",
             "use a {chart}", "compare against last month's {col}", "do it in {tool}"],
    "planning": ["book {city} early", "share the agenda with {person}", "set a deadline {when}",
                 "keep 10% of {money} in reserve", "confirm numbers with {person2}"],
    "everyday": ["swap the {ingredient} for {ingredient2}", "test the {fabric} on a hidden spot",
                 "warm up for five minutes", "keep it short and kind", "prep the {dish} the night before"],
}

OPENERS = ["Sure.", "Here you go.", "Done.", "Good question.", "Of course.", "Got it.", "Right."]
CLOSERS = ["Want me to go further?", "Tell me if that misses anything.", "That should do it.",
           "I kept everything else unchanged.", "Happy to adjust the details.", ""]
PREFIXES = ["", "", "", "", "Quick question: ", "Hey, ", "Following up on yesterday: ", "One more thing: "]
SUFFIXES = ["", "", "", "", " Keep it under {n} words.", " No external libraries, please.", " Use bullet points.",
            " I need this {when}.", " Explain it like I'm new to this.", " Same style as last time."]
MEMORIES = [
    "{person} prefers {pref}.",
    "Lesson: when asked to rename {ident}, just rename it; do not suggest alternatives.",
    "Correction: {ident} lives in {file}, not in the {dir} folder.",
    "Note: the {event} is {when} in {city}; {person} is organising it.",
    "{person} is allergic to {ingredient}; leave it out of recipes.",
    "Preference: {tone} tone for {doc} drafts aimed at {audience}.",
    "The {dataset} dashboard reads {col} from {tool}, not from the raw export.",
    "Project uses {lib} with {lang}; tests run under {file}.",
]
QUERIES = [  # different phrasing from the corpus, same vocabulary
    "how did we fix the {error} in {ident}",
    "what does {person} prefer",
    "{lib} {error} after the upgrade",
    "recipe ideas using {ingredient}",
    "notes about the {event} in {city}",
    "that {tone} {doc} on {topic}",
    "best chart for {col} split by {col2}",
    "where is {ident} defined",
    "budget for the {event}",
    "{dataset} {col} duplicates",
    "tests for {ident}",
    "gift for someone into {hobby}",
]


class _Writer:
    """Fills templates from the vocabulary with a seeded RNG."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def slots(self) -> dict[str, str]:
        r = self.rng
        lang = r.choice(V["lang"])
        ident = lambda: f"{r.choice(V['verb'])}_{r.choice(V['noun'])}"  # noqa: E731
        ext = {"Python": "py", "TypeScript": "ts", "Go": "go", "Rust": "rs", "Java": "java"}.get(lang, "txt")
        s = {k: r.choice(v) for k, v in V.items()}
        s.update(lang=lang, lang2=r.choice(V["lang"]), ident=ident(), ident2=ident(),
                 file=f"{r.choice(V['dir'])}/{r.choice(V['noun'])}.{ext}",
                 n=str(r.choice([3, 4, 5, 7, 10, 20, 30, 150, 300])),
                 tone2=r.choice(V["tone"]), col2=r.choice(V["col"]), person2=r.choice(V["person"]),
                 **dict(zip(("ingredient", "ingredient2", "ingredient3"), r.sample(V["ingredient"], 3))))
        return s

    def user(self, domain: str, s: dict[str, str]) -> str:
        r = self.rng
        text = r.choice(PREFIXES) + r.choice(USER[domain]).format(**s)
        suffix = r.choice(SUFFIXES).format(**s)
        if suffix and text[-1] not in ".?!":
            text += "."
        return text[0].upper() + text[1:] + suffix

    def assistant(self, domain: str, s: dict[str, str]) -> str:
        r = self.rng
        steps = [x.format(**s) for x in r.sample(STEPS[domain], 3)]
        return f"{r.choice(OPENERS)} First, {steps[0]}; then {steps[1]}, and {steps[2]}. {r.choice(CLOSERS)}".strip()

    def memory(self) -> str:
        return self.rng.choice(MEMORIES).format(**self.slots())

    def query(self) -> str:
        return self.rng.choice(QUERIES).format(**self.slots())

    def session(self) -> list[tuple[str, str]]:
        """A conversation on one topic: (role, text) pairs, user first."""
        domain = self.rng.choice(list(USER))
        s = self.slots()
        turns = []
        for _ in range(self.rng.randint(1, 6)):
            turns += [("user", self.user(domain, s)), ("assistant", self.assistant(domain, s))]
            if self.rng.random() < 0.5:  # the conversation drifts: new slots, same domain
                s = self.slots()
        return turns


def conversations(n_texts: int, seed: int, memory_rate: float = 0.25) -> list[dict]:
    """Sessions holding at least ``n_texts`` distinct texts (turns, plus a memory note after some)."""
    w = _Writer(seed)
    seen: set[str] = set()
    sessions: list[dict] = []
    count = 0
    while count < n_texts:
        turns = []
        for role, text in w.session():
            if text not in seen:
                seen.add(text)
                turns.append((role, text))
        memory = w.memory() if w.rng.random() < memory_rate else None
        if memory in seen:
            memory = None
        if memory:
            seen.add(memory)
        if turns:
            sessions.append({"name": f"s{len(sessions)}", "turns": turns, "memory": memory})
            count += len(turns) + (memory is not None)
    return sessions


def session_texts(sessions: Sequence[dict]) -> list[str]:
    return [t for s in sessions for t in [x for _, x in s["turns"]] + ([s["memory"]] if s["memory"] else [])]


def queries(n: int, seed: int, exclude: set[str]) -> list[str]:
    w = _Writer(seed)
    out: list[str] = []
    while len(out) < n:
        q = w.query()
        if q not in exclude and q not in out:
            out.append(q)
    return out
