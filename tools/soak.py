#!/usr/bin/env python3
"""Differential soak of the php body form: random Singapay-like bodies that lean on the
hard cases, each with PHP's own canonical form (tools/php_canonical.php is the oracle).

  soak.py --count N --seed S > bodies.jsonl     # one {"body": ..., "php": ... | null} a line

The comparison with the receiver's canonicaliser is a test that runs this script:

  SOAK_BODIES=100000 SOAK_SEED=1 scripts/test php_differential_soak

It prints the first divergence as an assertion to paste into a test. The suite runs 3,000
bodies with seed 1 by default.
"""
import argparse, json, os, random, struct, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mkvectors import php_canonical  # noqa: E402

LEAF_STRINGS = ["é", "—", "Café", "名", "😀", "\u2028", "\u2029", "\u00a0", "a/b", "<b>", "&amp;", "'", "%20"]
ESCAPES = ["\\/", "\\\"", "\\\\", "\\n", "\\t", "\\r", "\\b", "\\f", "\\u0000", "\\u001f", "\\u007f",
           "\\u00e9", "\\u2028", "\\u2029", "\\ud83d\\ude00", "\\u0041", "\\uD83D\\uDE00"]


class Soak:
    def __init__(self, rnd):
        self.r = rnd

    def ws(self, pretty):
        return self.r.choice(["", "", " ", "\n  "]) if pretty else ""

    def string(self):
        r = self.r
        pieces = []
        for _ in range(r.randint(0, 6)):
            c = r.random()
            if c < 0.35:
                pieces.append("".join(r.choice("abcXYZ019 _-.:") for _ in range(r.randint(1, 8))))
            elif c < 0.55:
                pieces.append(r.choice(LEAF_STRINGS))
            else:
                pieces.append(r.choice(ESCAPES))
        return '"' + "".join(pieces) + '"'

    def key(self):
        r = self.r
        return r.choice([
            lambda: self.string(),
            lambda: '"%d"' % r.randint(0, 40),           # numeric-string keys
            lambda: r.choice(['"01"', '"-1"', '" 1"', '"1.0"', '"9223372036854775808"', '""']),
            lambda: '"%s"' % r.choice(["amount", "status", "data", "reff_no", "é", "Z", "a", "_"]),
        ])()

    def number(self):
        r = self.r
        c = r.random()
        if c < 0.25:
            # A random double printed shortest (Python's repr breaks ties as PHP does) or
            # with 17 significant digits (a neighbour of a tie, spelled long).
            bits = r.getrandbits(64)
            f = struct.unpack("<d", struct.pack("<Q", bits))[0]
            if f != f or f in (float("inf"), float("-inf")):
                f = 1.5
            return repr(f) if r.random() < 0.5 else "%.17g" % f
        if c < 0.45:
            # 15-17 significant digits with a fraction, at magnitudes around 1e14..1e16,
            # where half-way cases are common.
            digits = str(r.randint(10 ** 14, 10 ** 17 - 1))
            point = r.randint(1, len(digits) - 1)
            return digits[:point] + "." + digits[point:]
        if c < 0.6:
            m = r.randint(1, 10 ** r.randint(1, 17))
            e = r.randint(-330, 307 - len(str(m)))
            return r.choice(["%de%d", "%dE%+d", "%d.0e%d"]) % (m, e)
        if c < 0.75:
            n = r.choice([2 ** 63 - 1, 2 ** 63, -2 ** 63, -2 ** 63 - 1, 2 ** 64, 10 ** 19, 10 ** 30])
            return str(n + r.randint(-2, 2))
        if c < 0.9:
            return r.choice(["0", "-0", "0.0", "-0.0", "1.0", "10000.00", "0.070", "1e2", "1E-7", "1.0e+25",
                             "0.1", "0.30000000000000004", "5e-324", "1.7976931348623157e308",
                             "123456789012345678", "12345678901234567.5"])
        return str(r.randint(-10 ** 6, 10 ** 6))

    def value(self, depth, pretty):
        r = self.r
        c = r.random()
        if depth > 3 or c < 0.45:
            return r.choice([self.string, self.number, self.number, lambda: r.choice(["true", "false", "null"])])()
        if c < 0.7:
            return self.obj(depth + 1, pretty)
        return self.arr(depth + 1, pretty)

    def arr(self, depth, pretty):
        r = self.r
        n = r.choice([0, 1, 2, 3, 9, 10, 11, 12, 20, 30, r.randint(0, 30)])
        if n and depth <= 2 and r.random() < 0.3:  # a list of objects
            items = [self.obj(depth + 1, pretty) for _ in range(n)]
        else:
            items = [self.value(depth, pretty) for _ in range(n)]
        if not items:
            return "[" + self.ws(pretty) + "]"
        return "[" + ",".join(self.ws(pretty) + i + self.ws(pretty) for i in items) + "]"

    def obj(self, depth, pretty):
        r = self.r
        n = r.choice([0, 1, 2, 3, 4, 6, 11, 12])
        if r.random() < 0.15:  # keys "0".."n-1" shuffled: PHP sees a list
            keys = ['"%d"' % i for i in range(n)]
            r.shuffle(keys)
        else:
            keys = [self.key() for _ in range(n)]
            if keys and r.random() < 0.1:
                keys.append(keys[0])  # duplicate key: the last one wins
        members = [self.ws(pretty) + k + self.ws(pretty) + ":" + self.ws(pretty) + self.value(depth, pretty)
                   for k in keys]
        if not members:
            return "{" + self.ws(pretty) + "}"
        return "{" + ",".join(members) + self.ws(pretty) + "}"

    def deep(self):
        # Nesting around PHP's limit (511 levels), of objects or arrays or both.
        r = self.r
        depth = r.choice([r.randint(1, 40), r.randint(500, 520)])
        out = self.number()
        for _ in range(depth - 1):
            out = r.choice(['{"a":%s}', '[%s]', '[1,%s]', '{"b":[],"a":%s}']) % out
        return '{"event":"x","data":%s}' % out

    def body(self):
        r = self.r
        if r.random() < 0.05:
            return self.deep()
        pretty = r.random() < 0.3
        inner = self.obj(1, pretty)
        env = r.choice([
            '{"status":200,"success":true,"event":"va-transaction","timestamp":"26 Dec 2025 13:35:45","data":%s}',
            '{"response_code":"SP000","response_message":"Successfully","event":"disbursement","data":%s}',
            '{\n  "data" : %s ,\n  "event" : "transaction-expiration",\n  "status" : 200\n}',
            '%s',
        ])
        body = env % inner
        c = r.random()
        if c < 0.02:  # a lone surrogate: PHP's json_decode refuses the body
            return '{"poison":"\\ud800","rest":%s}' % body
        if c < 0.04:  # overflows to INF: PHP's json_encode refuses the body
            return '{"big":1e400,"rest":%s}' % body
        return body


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    gen = Soak(random.Random(args.seed))
    done = 0
    while done < args.count:
        bodies = [gen.body() for _ in range(min(5000, args.count - done))]
        for body, c in zip(bodies, php_canonical(bodies)):
            sys.stdout.write(json.dumps({"body": body, "php": c.get("canonical")}, ensure_ascii=False) + "\n")
        done += len(bodies)


if __name__ == "__main__":
    main()
