#!/usr/bin/env python3
"""Generate the bundled example event stream for churnwatch.

Usage::

    python3 examples/generate_events.py > examples/events.jsonl
    python3 examples/generate_events.py --customers 500 --seed 7 > /tmp/small.jsonl

Standard library only.  The output is deterministic: every random draw comes
from one ``random.Random(seed)`` (default seed 20261123), nothing depends on
the clock, the locale, the machine's tz database or hash ordering, and the
file is written as UTF-8 bytes with ``\\n`` line endings, so the same
arguments give the same file byte for byte.  A short summary goes to stderr.

Output format
-------------
One compact JSON object per line (``ensure_ascii=False``).  Every event has
``event_id`` (32 hex chars), ``type``, ``customer_id`` (``c000123``) and
``occurred_at`` (RFC 3339, seconds precision; mostly ``Z``, some with the
customer's local offset such as ``+03:00`` or ``-05:00``, always the same
instant correctly converted).  Types and extra fields:

* ``purchase``: order_id, amount, currency, optional categories
* ``refund``: order_id (of an earlier purchase), amount, currency
* ``support_ticket_opened``: ticket_id, optional severity, optional subject
* ``support_ticket_closed``: ticket_id, optional resolved
* ``complaint``: optional ticket_id, optional text
* ``satisfaction``: score 1..5, optional ticket_id
* ``customer_profile``: email, name, locale, timezone, marketing_consent
* ``email_unsubscribed``: optional reason
* ``email_bounced``: kind (``hard``/``soft``)
* ``customer_erased``: no extra fields

Amounts are decimal strings in the currency's minor-unit precision ("19.99",
KWD "12.500", JPY "1500"); about 5 % are JSON numbers instead (42.5).

Time range: 2024-11-01T00:00:00Z (inclusive) to 2026-11-01T00:00:00Z
(exclusive).

Customer model
--------------
The purchase side follows the BG/NBD story from the customer-base
literature: while "alive", a customer buys as a renewal process with their
own rate (gamma-distributed gaps, so some are regular and some bursty), and
after each purchase they may silently drop out with their own probability
p.  Drop-out is never announced; it only shows up as the absence of further
purchases.  Customers who have not dropped out keep buying until the end of
the range, so a cut-off at 2026-05-01 with a 180-day horizon gives a
meaningful "did not buy again" label.

Archetypes (shares of the customer base):

* steady (22 %): mean gap log-uniform between 7 and 120 days, gamma shape
  1.5-4, small drop-out probability (Beta(1, 45), mean ~2 %).
* loyal (12 %): start in the first eight months, mean gap 6-30 days,
  drop-out 0.3 %; they reach 10-25+ orders (milestones 5/10/25, yearly
  anniversaries).
* slowing (10 %): gaps start at 7-25 days and grow by a factor 1.12-1.45
  after every purchase, so 60-180-day silences appear naturally.
* lapsed (16 %): mean gap 10-50 days, high per-purchase drop-out
  (12-35 %), at least two purchases.
* unhappy (10 %): after 1-4 purchases they have a bad support experience:
  a high/normal severity ticket, usually a complaint, tickets left open for
  3-14 days or never closed, satisfaction 1-2, often a refund.  Afterwards
  55 % never buy again and the rest drop out with probability 35 % per
  purchase.  They also unsubscribe more often.
* one_time (12 %): a single purchase.
* prospect (8 %): a profile only, never buy.
* returner (10 %): 2-5 purchases, then 120-300 days of silence, then 2-5
  more (a quarter go silent and come back once more).

Everybody who buys occasionally opens a routine ticket (about 4 % of
purchases) that is closed within 36 hours, often followed by a satisfaction
score of 4-5; about 3 % of purchases get a post-purchase survey score; about
2.5 % are refunded (sometimes much later, after other purchases).

Start dates: ~20 % in the first 45 days, ~45 % in the rest of the first
year, ~35 % in the second year (loyal customers and returners start early).
Customer ids are assigned in sign-up order.  Purchases happen at local
daytime hours in the customer's timezone.

Every customer gets a ``customer_profile`` event at, or up to three hours
before, their first activity: email ``c000123@example.com`` (example.com /
.org / .net only), an English, French or Arabic name (Arabic script or
transliterated), locale (~55 % en, 15 % en-GB, 25 % ar, 5 % fr), an IANA
timezone that fits the locale, marketing_consent true ~90 %.  A handful of
customers have names meant for escaping tests (HTML, template syntax,
quotes, tab/backslash, and one with an embedded CR/LF header injection).
About 3 % send a later profile update (new email, consent change, move).

Rarer account events: ~2 % unsubscribe, ~1 % bounce (mostly hard), ~0.3 %
are erased (no events for them follow the erasure).

Stream imperfections
--------------------
* Lines are sorted by occurred_at, except ~1 % of events that are written
  3 minutes to 4 hours later than their timestamp says.
* ~0.3 % of events are written twice (identical line, same event_id), the
  copy a few lines after the original.
* ~34 malformed lines spread through the file, each rejection class at
  least twice: invalid JSON (truncated), non-object JSON, a missing
  required field (each of the four), unknown type, unparseable timestamp
  (including one without offset), negative amount, non-numeric amount, bad
  currency, satisfaction score out of range or of the wrong JSON type,
  unknown severity, customer_id over 128 bytes, unknown bounce kind, and
  wrong JSON types for common fields.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter
from datetime import date, datetime, timedelta, timezone

DEFAULT_SEED = 20261123
DEFAULT_CUSTOMERS = 3000

START = int(datetime(2024, 11, 1, tzinfo=timezone.utc).timestamp())
END = int(datetime(2026, 11, 1, tzinfo=timezone.utc).timestamp())
DAY = 86400
HOUR = 3600

# ---------------------------------------------------------------------------
# Time zones: fixed offsets plus hand-coded US / EU daylight saving rules, so
# the output does not depend on the machine's tz database.
# ---------------------------------------------------------------------------


def _nth_sunday(year: int, month: int, n: int) -> date:
    d = date(year, month, 1)
    return d + timedelta(days=(6 - d.weekday()) % 7 + 7 * (n - 1))


def _last_sunday(year: int, month: int) -> date:
    nxt = date(year + month // 12, month % 12 + 1, 1)
    last = nxt - timedelta(days=1)
    return last - timedelta(days=(last.weekday() + 1) % 7)


def _utc(d: date, hour: int) -> int:
    return int(datetime(d.year, d.month, d.day, hour, tzinfo=timezone.utc).timestamp())


def _us_dst(ts: int) -> bool:
    year = datetime.fromtimestamp(ts, timezone.utc).year
    # 02:00 EST = 07:00 UTC; 02:00 EDT = 06:00 UTC
    return _utc(_nth_sunday(year, 3, 2), 7) <= ts < _utc(_nth_sunday(year, 11, 1), 6)


def _eu_dst(ts: int) -> bool:
    year = datetime.fromtimestamp(ts, timezone.utc).year
    return _utc(_last_sunday(year, 3), 1) <= ts < _utc(_last_sunday(year, 10), 1)


def tz_offset(tz: str, ts: int) -> int:
    """UTC offset in seconds of IANA zone `tz` at instant `ts`."""
    if tz == "America/New_York":
        return (-4 if _us_dst(ts) else -5) * HOUR
    if tz == "Europe/London":
        return (1 if _eu_dst(ts) else 0) * HOUR
    if tz == "Europe/Berlin":
        return (2 if _eu_dst(ts) else 1) * HOUR
    return {"Asia/Riyadh": 3, "Asia/Kuwait": 3, "Asia/Dubai": 4, "Asia/Tokyo": 9}[tz] * HOUR


# Offsets used by the occasional producer that reports in its own zone.
OTHER_OFFSETS = [5 * HOUR + 30 * 60, -8 * HOUR, -3 * HOUR - 30 * 60, 2 * HOUR, 0, 10 * HOUR]


def rfc3339(ts: int, offset: int | None) -> str:
    if offset is None:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    local = datetime.fromtimestamp(ts + offset, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    sign = "+" if offset >= 0 else "-"
    a = abs(offset)
    return f"{local}{sign}{a // HOUR:02d}:{a % HOUR // 60:02d}"


# ---------------------------------------------------------------------------
# Static vocabularies
# ---------------------------------------------------------------------------

ARCHETYPES = [
    ("steady", 22), ("loyal", 12), ("slowing", 10), ("lapsed", 16),
    ("unhappy", 10), ("one_time", 12), ("prospect", 8), ("returner", 10),
]

LOCALES = [("en", 55), ("en-GB", 15), ("ar", 25), ("fr", 5)]
TZ_BY_LOCALE = {
    "en": [("America/New_York", 75), ("Asia/Tokyo", 8), ("Asia/Dubai", 7),
           ("Europe/London", 5), ("Europe/Berlin", 5)],
    "en-GB": [("Europe/London", 85), ("Asia/Dubai", 10), ("Europe/Berlin", 5)],
    "ar": [("Asia/Riyadh", 45), ("Asia/Kuwait", 25), ("Asia/Dubai", 25), ("Europe/London", 5)],
    "fr": [("Europe/Berlin", 60), ("Europe/London", 20), ("Asia/Dubai", 20)],
}
LOCAL_CURRENCY = {"Asia/Kuwait": ("KWD", 0.6), "Asia/Tokyo": ("JPY", 0.7),
                  "Europe/Berlin": ("EUR", 0.75), "Europe/London": ("GBP", 0.7)}
CURRENCY_RATE = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "KWD": 0.307, "JPY": 150.0}
CURRENCY_DECIMALS = {"USD": 2, "EUR": 2, "GBP": 2, "KWD": 3, "JPY": 0}

CATEGORIES = ["shoes", "books", "kitchen", "garden", "toys", "beauty", "electronics"]
EMAIL_DOMAINS = [("example.com", 80), ("example.org", 12), ("example.net", 8)]

EN_FIRST = ["Emma", "Olivia", "Ava", "Sophia", "Isabella", "Mia", "Charlotte", "Amelia",
            "Harper", "Evelyn", "James", "Liam", "Noah", "William", "Benjamin", "Lucas",
            "Henry", "Alexander", "Jack", "Daniel", "Grace", "Chloe", "Ella", "Lily",
            "Hannah", "Oliver", "George", "Harry", "Thomas", "Samuel", "Sarah", "Emily",
            "Michael", "David", "Jessica", "Ryan", "Megan", "Laura", "Chris", "Kate"]
EN_LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
           "Wilson", "Taylor", "Anderson", "Thomas", "Moore", "Martin", "Jackson", "White",
           "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott",
           "Green", "Baker", "Adams", "Nelson", "Carter", "Evans", "Roberts", "Hughes",
           "Wood", "Turner", "Cooper", "Ward", "Morris", "Hill", "Bennett"]
AR_FIRST = ["ليلى", "محمد", "أحمد", "فاطمة", "مريم", "عمر", "يوسف", "خالد", "سارة", "نور",
            "علي", "حسن", "زينب", "هدى", "رنا", "سلمى", "طارق", "كريم", "عائشة", "ياسمين",
            "إبراهيم", "مصطفى", "ريم", "دانة", "فيصل", "سلطان", "لينا", "جود", "عبدالله", "منى"]
AR_LAST = ["حداد", "الخطيب", "العلي", "الحسن", "المصري", "الشمري", "العتيبي", "القحطاني",
           "الكندري", "المطيري", "النجار", "السيد", "عبد الرحمن", "الزعبي", "الحربي",
           "الدوسري", "البلوشي", "الأنصاري", "خليل", "سليمان"]
ARL_FIRST = ["Omar", "Layla", "Ahmed", "Fatima", "Youssef", "Khalid", "Sara", "Nour", "Ali",
             "Hassan", "Mariam", "Tariq", "Karim", "Aisha", "Yasmin", "Ibrahim", "Rania",
             "Faisal", "Salma", "Hamza"]
ARL_LAST = ["Khalil", "Haddad", "Al-Sayed", "Nasser", "Mansour", "Saleh", "Hamdan", "Aziz",
            "Rahman", "Farouk", "Qasim", "Habib", "Darwish", "Othman", "Said"]
FR_FIRST = ["Camille", "Léa", "Chloé", "Manon", "Inès", "Louis", "Gabriel", "Raphaël", "Hugo",
            "Théo", "Jules", "Zoé", "Élodie", "Mathéo", "Céline"]
FR_LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
           "Leroy", "Moreau", "Lefèvre", "Girard", "Fontaine", "Chevalier", "Rousseau"]

# Names for escaping tests (HTML, template syntax, quotes, control characters).
SPECIAL_NAMES = [
    "Tom & Jerry <b>Ltd</b>",
    "<script>alert(\"hi\")</script>",
    "O'Brien \"Danny\" & Sons",
    "Eve\r\nBcc: attacker@example.net",
    "{{ 7 * 7 }} {% if true %}Jinja{% endif %}",
    "Zoë Ünal-Ødegård",
    "محمد <i>العلي</i> & شركاه",
    "Anna\tTab \\ Backslash",
]

SUBJECTS = ["Where is my order?", "Damaged item", "Refund request", "Wrong size",
            "Cannot log in", "Charged twice", "Change delivery address",
            "Question about invoice", "طلبي لم يصل", "استبدال منتج", "Colis endommagé",
            "Item missing from parcel & box crushed"]
COMPLAINTS = [
    "Package arrived broken & nobody answers my emails.",
    "Third time asking: <b>where is my refund?</b>",
    "الطلب وصل متأخراً جداً والمنتج تالف",
    "خدمة العملاء لا ترد على رسائلي",
    "Charged twice for one order, still waiting > 2 weeks",
    "Très déçu, le colis n'est jamais arrivé.",
    "Wrong size again. Done with this shop.",
    "I was promised a callback \"within 24h\". Nothing.",
    "Support closed my ticket without fixing anything",
]
UNSUB_REASONS = ["too_many_emails", "not_interested", "never_signed_up", "other",
                 "Too many emails, sorry", "الرجاء التوقف عن إرسال الرسائل"]

# Hour-of-day weights for purchases in the customer's local time.
HOUR_WEIGHTS = [1, 1, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 10, 10, 9, 9, 9, 10, 12, 14, 14, 12, 8, 4]


def weighted(rng: random.Random, pairs):
    return rng.choices([p[0] for p in pairs], weights=[p[1] for p in pairs], k=1)[0]


class Customer:
    __slots__ = ("idx", "cid", "archetype", "start", "locale", "tz", "name", "email",
                 "consent", "currency", "local_emitter", "basket", "favorites",
                 "events", "bad_time")

    def __init__(self, archetype: str, start: int):
        self.archetype = archetype
        self.start = start
        self.events: list = []
        self.bad_time = None


class Generator:
    def __init__(self, seed: int, n_customers: int):
        self.rng = random.Random(seed)
        self.n = n_customers
        self.ids: set[str] = set()
        self.order_ids: set[str] = set()
        self.ticket_ids: set[str] = set()
        self.seq = 0

    # -- ids ---------------------------------------------------------------
    def _hex(self, bits: int, used: set[str]) -> str:
        while True:
            h = format(self.rng.getrandbits(bits), f"0{bits // 4}x")
            if h not in used:
                used.add(h)
                return h

    def event_id(self) -> str:
        return self._hex(128, self.ids)

    def order_id(self) -> str:
        return "ord_" + self._hex(48, self.order_ids)

    def ticket_id(self) -> str:
        return "tkt_" + self._hex(40, self.ticket_ids)

    # -- time helpers ------------------------------------------------------
    def fmt_time(self, c: Customer, ts: int) -> str:
        r = self.rng.random()
        if c.local_emitter and r < 0.6:
            return rfc3339(ts, tz_offset(c.tz, ts))
        if r > 0.99:
            return rfc3339(ts, self.rng.choice(OTHER_OFFSETS))
        return rfc3339(ts, None)

    def daytime(self, c: Customer, ts: int) -> int:
        """Move `ts` to a random daytime moment on the same local calendar day."""
        off = tz_offset(c.tz, ts)
        local = ts + off
        hour = self.rng.choices(range(24), weights=HOUR_WEIGHTS, k=1)[0]
        return local - local % DAY + hour * HOUR + self.rng.randrange(HOUR) - off

    def next_purchase(self, c: Customer, t: int, gap_days: float) -> int:
        t2 = self.daytime(c, t + int(gap_days * DAY))
        if t2 <= t:
            t2 = t + self.rng.randint(10 * 60, 3 * HOUR)
        return t2

    # -- event construction ------------------------------------------------
    def emit(self, c: Customer, etype: str, ts: int, prio: int = 1, **fields):
        if ts >= END or ts < START:
            return None
        obj = {"event_id": self.event_id(), "type": etype, "customer_id": c.cid,
               "occurred_at": self.fmt_time(c, ts)}
        obj.update(fields)
        self.seq += 1
        c.events.append([ts, prio, self.seq, obj])
        return obj

    def amount(self, c: Customer, usd: float, currency: str | None = None):
        cur = currency or c.currency
        value = usd * CURRENCY_RATE[cur]
        dec = CURRENCY_DECIMALS[cur]
        if dec == 0:
            value = max(10, int(round(value / 10.0)) * 10)
            text = str(value)
        else:
            if dec == 2 and self.rng.random() < 0.4:
                value = math.floor(value) + 0.99
            value = max(value, 0.5)
            text = f"{value:.{dec}f}"
        return text, cur

    def render_amount(self, text: str):
        if self.rng.random() < 0.05:
            return int(text) if "." not in text else float(text)
        return text

    # -- customers ---------------------------------------------------------
    def make_customers(self) -> list[Customer]:
        rng = self.rng
        customers = []
        for _ in range(self.n):
            arch = weighted(rng, ARCHETYPES)
            if arch == "loyal":
                start = START + rng.randint(2 * HOUR, 240 * DAY)
            elif arch == "returner":
                start = START + rng.randint(2 * HOUR, 330 * DAY)
            else:
                r = rng.random()
                if r < 0.20:
                    start = START + rng.randint(2 * HOUR, 45 * DAY)
                elif r < 0.65:
                    start = START + rng.randint(45 * DAY, 365 * DAY)
                else:
                    start = START + rng.randint(365 * DAY, 720 * DAY)
            customers.append(Customer(arch, start))
        customers.sort(key=lambda c: c.start)  # stable: sign-up order
        for i, c in enumerate(customers):
            c.idx = i
            c.cid = f"c{i + 1:06d}"
            c.locale = weighted(rng, LOCALES)
            c.tz = weighted(rng, TZ_BY_LOCALE[c.locale])
            c.name = self.pick_name(c.locale)
            c.email = f"{c.cid}@{weighted(rng, EMAIL_DOMAINS)}"
            c.consent = rng.random() < 0.9
            cur = "USD"
            if c.tz in LOCAL_CURRENCY and rng.random() < LOCAL_CURRENCY[c.tz][1]:
                cur = LOCAL_CURRENCY[c.tz][0]
            c.currency = cur
            c.local_emitter = rng.random() < 0.15
            c.basket = rng.lognormvariate(0.0, 0.4)
            c.favorites = rng.sample(CATEGORIES, rng.randint(1, 3))
        # Assign the escaping-test names to buying customers.
        pool = [c for c in customers if c.archetype in ("steady", "loyal")]
        if len(pool) >= len(SPECIAL_NAMES):
            for c, name in zip(rng.sample(pool, len(SPECIAL_NAMES)), SPECIAL_NAMES):
                c.name = name
        return customers

    def pick_name(self, locale: str) -> str:
        rng = self.rng
        r = rng.random()
        if locale == "ar":
            if r < 0.7:
                return f"{rng.choice(AR_FIRST)} {rng.choice(AR_LAST)}"
            return f"{rng.choice(ARL_FIRST)} {rng.choice(ARL_LAST)}"
        if locale == "fr":
            if r < 0.85:
                return f"{rng.choice(FR_FIRST)} {rng.choice(FR_LAST)}"
            return f"{rng.choice(ARL_FIRST)} {rng.choice(ARL_LAST)}"
        if r < 0.85:
            return f"{rng.choice(EN_FIRST)} {rng.choice(EN_LAST)}"
        if r < 0.95:
            return f"{rng.choice(ARL_FIRST)} {rng.choice(ARL_LAST)}"
        return f"{rng.choice(AR_FIRST)} {rng.choice(AR_LAST)}"

    # -- purchase timelines --------------------------------------------------
    def purchase_times(self, c: Customer) -> list[int]:
        rng = self.rng
        a = c.archetype
        t = self.daytime(c, c.start)
        if t < c.start:
            t += DAY
        if a == "prospect" or t >= END:
            return []
        times = [t]
        if a == "one_time":
            return times

        def run(times, mean, shape, p_drop, min_n=1, growth=1.0, max_n=10**6):
            t = times[-1]
            n = 0
            while n < max_n:
                if len(times) >= min_n and rng.random() < p_drop:
                    break
                t = self.next_purchase(c, t, max(rng.gammavariate(shape, mean / shape), 0.05))
                if t >= END:
                    break
                times.append(t)
                n += 1
                mean *= growth
            return times

        if a == "steady":
            mean = math.exp(rng.uniform(math.log(7), math.log(120)))
            return run(times, mean, rng.uniform(1.5, 4.0), rng.betavariate(1, 45))
        if a == "loyal":
            mean = math.exp(rng.uniform(math.log(6), math.log(30)))
            return run(times, mean, rng.uniform(2.0, 5.0), 0.003)
        if a == "slowing":
            return run(times, rng.uniform(7, 25), 3.0, 0.02, growth=rng.uniform(1.12, 1.45))
        if a == "lapsed":
            return run(times, rng.uniform(10, 50), rng.uniform(2.0, 3.0),
                       rng.uniform(0.12, 0.35), min_n=2)
        if a == "unhappy":
            # Purchases up to the bad experience; the rest is decided in simulate().
            k = rng.randint(1, 4)
            return run(times, rng.uniform(15, 60), 2.5, 0.0, max_n=k - 1)
        if a == "returner":
            mean = rng.uniform(10, 40)
            run(times, mean, 2.5, 0.0, max_n=rng.randint(1, 4))
            phases = 2 if rng.random() < 0.25 else 1
            for ph in range(phases):
                silence = rng.uniform(120, 300)
                t = self.next_purchase(c, times[-1], silence)
                if t >= END:
                    break
                times.append(t)
                run(times, mean, 2.5, 0.0,
                    max_n=rng.randint(1, 4) if ph == 0 else rng.randint(0, 2))
            return times
        raise AssertionError(a)

    # -- per-customer simulation ---------------------------------------------
    def simulate(self, c: Customer) -> None:
        rng = self.rng
        times = self.purchase_times(c)
        orders: list[tuple[int, str, str, str]] = []  # (ts, order_id, amount text, currency)

        def purchase(t: int, unhappy_phase: bool = False):
            usd = rng.lognormvariate(math.log(40), 0.7) * c.basket
            cur = c.currency if rng.random() > 0.03 else "USD"
            text, cur = self.amount(c, usd, cur)
            oid = self.order_id()
            fields = {"order_id": oid, "amount": self.render_amount(text), "currency": cur}
            if rng.random() < 0.7:
                n = rng.choice([1, 1, 1, 2, 2, 3])
                cats = list(c.favorites)
                rng.shuffle(cats)
                extra = [x for x in CATEGORIES if x not in cats]
                cats = (cats + rng.sample(extra, len(extra)))[:n]
                fields["categories"] = cats
            if self.emit(c, "purchase", t, **fields) is None:
                return
            orders.append((t, oid, text, cur))
            # refunds
            p_ref = 0.08 if c.archetype == "unhappy" else 0.025
            if rng.random() < p_ref:
                if len(orders) > 1 and rng.random() < 0.2:
                    ot, roid, rtext, rcur = rng.choice(orders[:-1])
                    rt = t + rng.randint(HOUR, 10 * DAY)
                else:
                    ot, roid, rtext, rcur = orders[-1]
                    rt = t + rng.randint(12 * HOUR, 20 * DAY)
                self.refund(c, rt, roid, rtext, rcur)
            # routine (happy) support ticket
            if not unhappy_phase and rng.random() < 0.04:
                self.happy_ticket(c, t + rng.randint(2 * HOUR, 10 * DAY))
            # post-purchase survey
            if rng.random() < 0.03:
                w = [2, 4, 12, 37, 45] if not unhappy_phase else [25, 30, 25, 15, 5]
                score = rng.choices([1, 2, 3, 4, 5], weights=w, k=1)[0]
                self.emit(c, "satisfaction", t + rng.randint(DAY, 7 * DAY), score=score)

        for t in times:
            purchase(t)

        if c.archetype == "unhappy" and times:
            t_bad = times[-1] + rng.randint(12 * HOUR, 15 * DAY)
            end_bad = self.bad_experience(c, t_bad, orders)
            c.bad_time = t_bad
            if rng.random() >= 0.55:
                mean = rng.uniform(25, 90)
                t = max(end_bad, times[-1])
                while True:
                    t = self.next_purchase(c, t, rng.gammavariate(2.0, mean / 2.0))
                    if t >= END:
                        break
                    purchase(t, unhappy_phase=True)
                    if rng.random() < 0.35:
                        break

        first = min((e[0] for e in c.events), default=c.start)
        last_activity = max((e[0] for e in c.events), default=c.start)
        if first >= END:
            first = c.start

        # account events
        p_unsub = {"unhappy": 0.08, "prospect": 0.03}.get(c.archetype, 0.012)
        if rng.random() < p_unsub:
            lo = c.bad_time + 2 * DAY if c.bad_time else first + HOUR
            t = rng.randint(lo, max(lo, min(END - 1, max(last_activity, lo) + 200 * DAY)))
            fields = {}
            if rng.random() < 0.7:
                fields["reason"] = rng.choice(UNSUB_REASONS)
            self.emit(c, "email_unsubscribed", t, **fields)
        if rng.random() < 0.01:
            t = rng.randint(first + HOUR, max(first + HOUR, END - 1))
            self.emit(c, "email_bounced", t, kind="hard" if rng.random() < 0.8 else "soft")
        if rng.random() < 0.03:
            t = rng.randint(first + 7 * DAY, max(first + 7 * DAY, END - 1))
            self.profile_update(c, t)

        # the profile itself, at or shortly before the first activity
        pt = first if rng.random() < 0.25 else first - rng.randint(60, 3 * HOUR)
        pt = max(pt, START)
        self.emit(c, "customer_profile", pt, prio=0, **self.profile_fields(c))

    def profile_fields(self, c: Customer) -> dict:
        return {"email": c.email, "name": c.name, "locale": c.locale,
                "timezone": c.tz, "marketing_consent": c.consent}

    def profile_update(self, c: Customer, t: int) -> None:
        rng = self.rng
        old = (c.email, c.consent, c.locale, c.tz)
        kind = rng.choice(["email", "email", "consent", "consent", "move"])
        if kind == "email":
            c.email = rng.choice([f"{c.cid}.new@example.org", f"{c.cid}+shop@example.net",
                                  f"{c.cid}@example.com"])
            if c.email == old[0]:
                c.email = f"{c.cid}.alt@example.com"
        elif kind == "consent":
            c.consent = not c.consent
        else:
            c.locale = rng.choice([x for x, _ in LOCALES if x != c.locale])
            c.tz = weighted(rng, TZ_BY_LOCALE[c.locale])
        self.emit(c, "customer_profile", t, **self.profile_fields(c))
        # the first profile event (emitted later, earlier in time) keeps the old values
        c.email, c.consent, c.locale, c.tz = old

    def refund(self, c: Customer, t: int, oid: str, text: str, cur: str) -> None:
        rng = self.rng
        if rng.random() < 0.25:
            dec = CURRENCY_DECIMALS[cur]
            part = float(text) * rng.uniform(0.3, 0.9)
            text = str(max(10, int(round(part / 10.0)) * 10)) if dec == 0 else f"{part:.{dec}f}"
        self.emit(c, "refund", t, order_id=oid, amount=self.render_amount(text), currency=cur)

    def happy_ticket(self, c: Customer, t: int) -> None:
        rng = self.rng
        tid = self.ticket_id()
        fields = {"ticket_id": tid}
        if rng.random() < 0.85:
            fields["severity"] = rng.choices(["low", "normal", "high"], weights=[50, 45, 5])[0]
        if rng.random() < 0.7:
            fields["subject"] = rng.choice(SUBJECTS)
        if self.emit(c, "support_ticket_opened", t, **fields) is None:
            return
        if rng.random() < 0.02:
            return  # forgotten in the help desk
        tc = t + rng.randint(30 * 60, 36 * HOUR)
        fields = {"ticket_id": tid}
        if rng.random() < 0.9:
            fields["resolved"] = rng.random() < 0.95
        self.emit(c, "support_ticket_closed", tc, **fields)
        if rng.random() < 0.65:
            score = rng.choices([3, 4, 5], weights=[15, 40, 45])[0]
            self.emit(c, "satisfaction", tc + rng.randint(5 * 60, DAY), score=score, ticket_id=tid)

    def bad_experience(self, c: Customer, t0: int, orders) -> int:
        """Tickets, complaint, low scores.  Returns the time the episode ends."""
        rng = self.rng
        end = t0
        n_tickets = 2 if rng.random() < 0.3 else 1
        t = t0
        for _ in range(n_tickets):
            tid = self.ticket_id()
            fields = {"ticket_id": tid}
            if rng.random() < 0.9:
                fields["severity"] = "high" if rng.random() < 0.55 else "normal"
            if rng.random() < 0.8:
                fields["subject"] = rng.choice(SUBJECTS)
            self.emit(c, "support_ticket_opened", t, **fields)
            if rng.random() < 0.7:
                cf = {}
                if rng.random() < 0.8:
                    cf["ticket_id"] = tid
                if rng.random() < 0.85:
                    cf["text"] = rng.choice(COMPLAINTS)
                self.emit(c, "complaint", t + rng.randint(HOUR, 72 * HOUR), **cf)
            r = rng.random()
            if r < 0.35:
                closed_at = None
            elif r < 0.80:
                closed_at = t + rng.randint(3 * DAY + HOUR, 14 * DAY)
            else:
                closed_at = t + rng.randint(4 * HOUR, 48 * HOUR)
            if closed_at is not None:
                cfields = {"ticket_id": tid}
                rr = rng.random()
                if rr < 0.8:
                    cfields["resolved"] = rr < 0.4
                self.emit(c, "support_ticket_closed", closed_at, **cfields)
            if rng.random() < 0.85:
                st = (closed_at or t + rng.randint(2 * DAY, 6 * DAY)) + rng.randint(10 * 60, DAY)
                score = rng.choices([1, 2, 3], weights=[55, 35, 10])[0]
                sf = {"score": score}
                if rng.random() < 0.85:
                    sf["ticket_id"] = tid
                self.emit(c, "satisfaction", st, **sf)
                end = max(end, st)
            end = max(end, closed_at or t + 3 * DAY)
            t = t + rng.randint(2 * DAY, 20 * DAY)
        if orders and rng.random() < 0.4:
            _, oid, text, cur = orders[-1]
            self.refund(c, end + rng.randint(HOUR, 5 * DAY), oid, text, cur)
        return end

    # -- whole stream --------------------------------------------------------
    def run(self):
        rng = self.rng
        customers = self.make_customers()
        for c in customers:
            self.simulate(c)

        # erasures: no events for the customer after the erasure
        special = set(SPECIAL_NAMES)
        eligible = [c for c in customers if c.name not in special and c.events]
        n_erase = min(len(eligible), max(1, round(self.n * 0.003)))
        erased = rng.sample(eligible, n_erase)
        erased.sort(key=lambda c: c.idx)
        for c in erased:
            first = min(e[0] for e in c.events)
            t = rng.randint(first + DAY, max(first + DAY, END - DAY))
            c.events = [e for e in c.events if e[0] < t]
            self.emit(c, "customer_erased", t, prio=2)

        records = [e for c in customers for e in c.events]
        # key: (position time, prio, seq); displaced events sort later than their time
        displaced = 0
        for e in records:
            if e[3]["type"] not in ("customer_profile", "customer_erased") and rng.random() < 0.01:
                delay = int(math.exp(rng.uniform(math.log(180), math.log(4 * HOUR))))
                e.append(e[0] + delay)
                displaced += 1
            else:
                e.append(e[0])
        records.sort(key=lambda e: (e[4], e[1], e[2]))
        lines = [json.dumps(e[3], ensure_ascii=False, separators=(",", ":")) for e in records]

        # duplicates: identical line a few lines after the original
        dup_at: dict[int, list[str]] = {}
        n_dup = 0
        for i, line in enumerate(lines):
            if rng.random() < 0.003:
                dup_at.setdefault(min(len(lines) - 1, i + rng.randint(1, 25)), []).append(line)
                n_dup += 1
        out: list[tuple[str, dict | None]] = []
        for i, (line, rec) in enumerate(zip(lines, records)):
            out.append((line, rec[3]))
            for d in dup_at.get(i, ()):
                out.append((d, None))

        # malformed lines, spread evenly through the file
        kinds = list(MALFORMED_KINDS)
        rng.shuffle(kinds)
        m = len(kinds)
        positions = [int((k + rng.uniform(0.2, 0.8)) * len(out) / m) for k in range(m)]
        final: list[str] = []
        pi = 0
        malformed = Counter()
        for i, (line, obj) in enumerate(out):
            while pi < m and positions[pi] == i:
                ref = obj if obj is not None else records[min(i, len(records) - 1)][3]
                final.append(self.malformed(kinds[pi], ref))
                malformed[kinds[pi]] += 1
                pi += 1
            final.append(line)
        while pi < m:
            final.append(self.malformed(kinds[pi], records[-1][3]))
            malformed[kinds[pi]] += 1
            pi += 1

        stats = {
            "archetypes": Counter(c.archetype for c in customers),
            "types": Counter(e[3]["type"] for e in records),
            "events": len(records),
            "duplicates": n_dup,
            "displaced": displaced,
            "malformed": malformed,
            "lines": len(final),
            "erased": len(erased),
        }
        return final, stats

    # -- malformed lines -----------------------------------------------------
    def malformed(self, kind: str, ref: dict) -> str:
        """A line that a strict consumer must reject, modelled on `ref`."""
        rng = self.rng
        cid = ref["customer_id"]
        at = ref["occurred_at"]

        def base(etype="purchase"):
            d = {"event_id": self.event_id(), "type": etype, "customer_id": cid, "occurred_at": at}
            if etype == "purchase":
                d.update(order_id=self.order_id(), amount="24.99", currency="USD")
            return d

        def dump(d):
            return json.dumps(d, ensure_ascii=False, separators=(",", ":"))

        d = None
        if kind.startswith("truncated_json"):
            full = dump(base())
            return full[: int(len(full) * rng.uniform(0.4, 0.8))]
        if kind == "not_object_array":
            return "[1,2]"
        if kind == "not_object_string":
            return "\"purchase\""
        if kind.startswith("missing_"):
            field = kind[len("missing_"):].rsplit("_", 1)[0]
            d = base("purchase" if kind.endswith("_1") else "satisfaction")
            if d["type"] == "satisfaction":
                d["score"] = 4
            del d[field]
        elif kind == "unknown_type_1":
            d = base()
            d["type"] = "purchase_v2"
        elif kind == "unknown_type_2":
            d = base("wishlist_added")
        elif kind == "bad_timestamp_words":
            d = base()
            d["occurred_at"] = "yesterday"
        elif kind == "bad_timestamp_range":
            d = base()
            d["occurred_at"] = "2025-13-45T00:00:00Z"
        elif kind == "bad_timestamp_no_offset":
            d = base()
            d["occurred_at"] = "2025-03-01T10:00:00"
        elif kind == "negative_amount_1":
            d = base()
            d["amount"] = "-5.00"
        elif kind == "negative_amount_2":
            d = base()
            d["amount"] = -12.5
        elif kind == "amount_not_number_1":
            d = base()
            d["amount"] = "ten"
        elif kind == "amount_not_number_2":
            d = base()
            d["amount"] = "12,50"
        elif kind == "bad_currency_1":
            d = base()
            d["currency"] = "DOLLARS"
        elif kind == "bad_currency_2":
            d = base()
            d["currency"] = "US$"
        elif kind == "bad_score_range":
            d = base("satisfaction")
            d["score"] = 7
        elif kind == "bad_score_type":
            d = base("satisfaction")
            d["score"] = "5"
        elif kind.startswith("bad_severity"):
            d = base("support_ticket_opened")
            d["ticket_id"] = self.ticket_id()
            d["severity"] = "urgent" if kind.endswith("_1") else "critical"
        elif kind == "long_customer_id_ascii":
            d = base()
            d["customer_id"] = "c" + "0" * 140
        elif kind == "long_customer_id_utf8":
            # 70 characters but 140 bytes of UTF-8
            d = base()
            d["customer_id"] = "ع" * 70
        elif kind.startswith("bad_bounce_kind"):
            d = base("email_bounced")
            d["kind"] = "medium" if kind.endswith("_1") else "temporary"
        elif kind == "wrong_type_customer_id":
            d = base()
            d["customer_id"] = int(cid[1:])
        elif kind == "wrong_type_event_id":
            d = base("satisfaction")
            d["score"] = 5
            d["event_id"] = rng.randrange(10**9)
        elif kind == "wrong_type_occurred_at":
            d = base()
            d["occurred_at"] = START + rng.randrange(END - START)
        else:
            raise AssertionError(kind)
        return dump(d)


MALFORMED_KINDS = [
    "truncated_json_1", "truncated_json_2",
    "not_object_array", "not_object_string",
    "missing_event_id_1", "missing_event_id_2",
    "missing_type_1", "missing_type_2",
    "missing_customer_id_1", "missing_customer_id_2",
    "missing_occurred_at_1", "missing_occurred_at_2",
    "unknown_type_1", "unknown_type_2",
    "bad_timestamp_words", "bad_timestamp_range", "bad_timestamp_no_offset",
    "negative_amount_1", "negative_amount_2",
    "amount_not_number_1", "amount_not_number_2",
    "bad_currency_1", "bad_currency_2",
    "bad_score_range", "bad_score_type",
    "bad_severity_1", "bad_severity_2",
    "long_customer_id_ascii", "long_customer_id_utf8",
    "bad_bounce_kind_1", "bad_bounce_kind_2",
    "wrong_type_customer_id", "wrong_type_event_id", "wrong_type_occurred_at",
]

MALFORMED_CLASSES = [
    "truncated_json", "not_object", "missing_event_id", "missing_type", "missing_customer_id",
    "missing_occurred_at", "unknown_type", "bad_timestamp", "negative_amount",
    "amount_not_number", "bad_currency", "bad_score", "bad_severity", "long_customer_id",
    "bad_bounce_kind", "wrong_type",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = ap.parse_args(argv)
    if args.customers < 1:
        ap.error("--customers must be at least 1")

    lines, st = Generator(args.seed, args.customers).run()
    data = ("\n".join(lines) + "\n").encode("utf-8")
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()

    err = sys.stderr
    print(f"churnwatch example events: seed={args.seed} customers={args.customers}", file=err)
    print("customers per archetype:", file=err)
    for name, _ in ARCHETYPES:
        print(f"  {name:<10} {st['archetypes'][name]:>6}", file=err)
    print("events per type:", file=err)
    for name, count in sorted(st["types"].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {name:<22} {count:>7}", file=err)
    print(f"events: {st['events']}  duplicated: {st['duplicates']}  "
          f"out of order: {st['displaced']}  erased customers: {st['erased']}", file=err)
    classes = Counter()
    for kind, count in st["malformed"].items():
        classes[next(p for p in MALFORMED_CLASSES if kind.startswith(p))] += count
    print(f"malformed lines: {sum(classes.values())} in {len(classes)} classes: "
          + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())), file=err)
    print(f"lines: {st['lines']}  bytes: {len(data)}", file=err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
