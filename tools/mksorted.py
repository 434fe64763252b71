#!/usr/bin/env python3
"""Expected `sorted` body forms (keys sorted, numbers as written), computed by Python's own
JSON parser: an oracle for the receiver's third signature form that shares no code with it.

    python3 tools/mksorted.py > tests/fixtures/sorted_vectors.json

The form: object members sorted by the UTF-8 bytes of their keys, a repeated key keeping
its last value, arrays and empty objects kept, numbers exactly as written, strings with
the minimal JSON escapes (control characters as lowercase \\u00xx) plus U+2028/U+2029, no
whitespace. Bodies come from tests/fixtures/vectors.json (signed by PHP) and the hard cases
below.
"""

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Number(str):
    """A number literal, kept as written."""


def parse(text):
    return json.loads(
        text,
        object_pairs_hook=lambda pairs: {k: v for k, v in pairs},
        parse_int=Number,
        parse_float=Number,
    )


def escape(s):
    out = json.dumps(s, ensure_ascii=False)
    return out.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def write(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, Number):
        return str(v)
    if isinstance(v, str):
        return escape(v)
    if isinstance(v, list):
        return "[" + ",".join(write(x) for x in v) + "]"
    keys = sorted(v, key=lambda k: k.encode("utf-8"))
    return "{" + ",".join(escape(k) + ":" + write(v[k]) for k in keys) + "}"


HARD = [
    '{"b":1,"a":2,"a":3}',
    '{"z":{},"y":[],"x":[{}],"w":{"b":[1,{"d":1,"c":2}],"a":null}}',
    '{"n":[1.0,1e17,1E+2,-0,-0.0,0.10,12345678901234567890123,2.5e-7]}',
    '{"s":"line\\nbreak\\ttab\\u0001\\u001f\\"q\\\\ \\/ \\u2028\\u2029 é 日本 😀"}',
    '{"é":1,"e":2,"E":3,"😀":4,"日":5,"":6,"10":7,"2":8}',
    '  {"pretty" : [ 1 , 2 ] ,\n "layout" : { "kept" : false } }  ',
    '{"data":{"items":[0,1,2,3,4,5,6,7,8,9,10,11],"meta":{}}}',
]


def main():
    vectors = json.loads((ROOT / "tests/fixtures/vectors.json").read_text())["vectors"]
    bodies = [v["raw_body"] for v in vectors] + HARD
    out = []
    seen = set()
    for body in bodies:
        if body in seen:
            continue
        seen.add(body)
        try:
            expected = write(parse(body))
            # A lone surrogate escape (\ud800) is no Unicode text: no form to compare.
            expected.encode("utf-8")
        except (ValueError, RecursionError, UnicodeEncodeError):
            continue
        out.append({"body": body, "sorted": expected})
    print(json.dumps({"generator": "tools/mksorted.py", "vectors": out}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
