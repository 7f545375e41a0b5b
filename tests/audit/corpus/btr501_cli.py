# ruff: noqa
"""print in a command-line module is its interface: not flagged."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.parse_args()
    print("done")
