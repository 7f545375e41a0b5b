# Vendored from https://github.com/PyCQA/bandit examples/flask_debug.py at 92080542688902ad1eb6af74cf16939fad767d29.
# Copyright (c) the bandit developers, Apache License 2.0 (see LICENSE-bandit).
# Unchanged below this header but for end-of-line '# expect:' / '# peer-only:' labels.
# ruff: noqa (vendored fixtures: their findings are the point)
# fmt: off
from flask import Flask

app = Flask(__name__)

@app.route('/')
def main():
    raise

#bad
app.run(debug=True)  # expect: BTR402

#okay
app.run()
app.run(debug=False)

#unrelated
run()
run(debug=True)
run(debug)
