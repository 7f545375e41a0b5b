# ruff: noqa
"""BTR900: suppressions need a reason; with one, the finding is suppressed and not listed."""

import requests

requests.get("https://a.example.com")  # buttress: ignore[BTR001]  # expect: BTR900
requests.get(
    "https://b.example.com"
)  # buttress: ignore[BTR001] streaming health probe, bounded by the caller
text = "# buttress: ignore[BTR001] inside a string is not a comment"
requests.get(  # buttress: ignore[BTR001] multi-line call, comment on the first line
    "https://c.example.com",
)
# buttress: ignore[BTR001] a reason too long to share the line, on the line above it
requests.get("https://d.example.com")
# buttress: ignore[BTR001] a comment line suppresses the next line only
x = 1
requests.get("https://e.example.com")  # expect: BTR001
