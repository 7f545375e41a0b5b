# ruff: noqa
"""print inside a __main__ guard is not flagged."""

if __name__ == "__main__":
    print("starting")
