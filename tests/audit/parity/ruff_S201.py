# Vendored from https://github.com/astral-sh/ruff crates/ruff_linter/resources/test/fixtures/flake8_bandit/S201.py at fca5c7cf2cd2f8338f18b9485f936b8e9f07bd0b.
# Copyright (c) 2022 Charles Marsh, MIT License (see LICENSE-ruff).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
from flask import Flask

app = Flask(__name__)

@app.route('/')
def main():
    raise

# OK
app.run(debug=True)  # expect: BTR402

# Errors
app.run()
app.run(debug=False)

# Unrelated
run()
run(debug=True)
run(debug)
foo.run(debug=True)  # expect: BTR402
app = 1
app.run(debug=True)  # expect: BTR402
