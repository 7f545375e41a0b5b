# ruff: noqa
"""A Django management command: print is its interface (BTR501 passes)."""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    def handle(self, *args, **options):
        print("refreshed 12 products")
